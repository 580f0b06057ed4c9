"""The dashboard in a real browser: a finished experiment's page served over HTTP on 127.0.0.1, opened by headless
Debian chromium. Checks that the verdict and the SVG charts rendered, keeps tests/artifacts/dashboard.png."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from litestar import Litestar
from litestar.datastructures import State

from conftest import missing_part
from dashboards.routes import DashboardSource, router
from experiments.schema import parse_experiment
from gateway.launcher import free_port
from gateway.eventlog import store, tables
from metric_events import START, experiment_config, generate

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DAYS = 10




@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    client = store.connect(f"chdb://{tmp / 'store'}")
    tables.migrate(client)
    generate("finetune-vs-baseline", {"baseline": 0.22, "finetuned": 0.27}, units=3000, days=DAYS,
             seed=5).insert(client)
    rows = [[f"run-{arm}", START, f"enc-{arm}", f"idx-{arm}", arm, "scifact", "test", metric, k, value, 300]
            for arm, values in (("baseline", (0.645, 0.925, 0.605)), ("finetuned", (0.702, 0.951, 0.668)))
            for (metric, k), value in zip((("ndcg", 10), ("recall", 100), ("mrr", 10)), values)]
    client.insert("abgate.offline_eval", rows, column_names=["run_id", "ts", "encoder_checksum", "index_checksum",
                  "label", "dataset", "split", "metric", "k", "value", "queries"])
    data = experiment_config("finetune-vs-baseline", ("baseline", "finetuned"), days=DAYS,
                             secondary=("click_share", "clicks_per_search", "mrr", "abandonment", "dwell_success"))
    data["description"] = "Does the SciFact fine-tune beat all-MiniLM-L6-v2 for users?"
    # Margins this small log can show the guardrails within (non-inferiority), so the page shows a ship.
    data["metrics"]["guardrails"] = [{"metric": "latency_p95", "max_relative_increase": 0.5},
                                     {"metric": "zero_result_rate", "max_absolute_increase": 0.05}]
    exp, problems = parse_experiment(data)
    assert not problems
    source = DashboardSource(lambda: {exp.name: exp}, lambda: client)
    app = Litestar(route_handlers=[router], state=State({"dashboard_source": source}))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "the dashboard server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)
    client.close()


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        missing_part("chromium", "`make test` installs it when it may (root or passwordless sudo); otherwise "
                     "run `sudo apt-get install -y chromium chromium-driver`")
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_http_routes(server):
    index = httpx.get(f"{server}/dashboard")
    assert index.status_code == 200 and "finetune-vs-baseline" in index.text
    report = httpx.get(f"{server}/dashboard/finetune-vs-baseline/report.json", timeout=60).json()
    assert report["verdict"]["status"] == "ship" and report["verdict"]["winner"] == "finetuned"
    missing = httpx.get(f"{server}/dashboard/no-such-experiment")
    assert missing.status_code == 404
    assert "no experiment named 'no-such-experiment'" in missing.json()["detail"]


def test_browser_renders_verdict_and_charts(server, tmp_path):
    url = f"{server}/dashboard/finetune-vs-baseline"
    dom = _chromium(tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'id="verdict"' in html and "Ship finetuned" in html
    assert 'id="srm"' in html and "b-ok" in html
    for chart in ("chart forest", "chart cumulative", "chart daily"):
        assert f'class="{chart}"' in html, chart
    assert html.count("<svg") >= 4 and html.count("<circle") > 20  # points were drawn, not empty charts
    assert 'id="offline"' in html and "ndcg@10" in html
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    shot.unlink(missing_ok=True)
    result = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", url)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert shot.stat().st_size > 50_000  # a rendered page, not a blank one
