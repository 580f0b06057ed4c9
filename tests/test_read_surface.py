"""The closed read surface and the server's limits, on a real `abgate serve`: keys for dashboards and experiment
details, one report build for many concurrent readers, slow and oversized clients cut off."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from litestar import Litestar
from litestar.datastructures import State
from litestar.testing import TestClient

from conftest import GatewayProcess, write_two_arm_experiment
from dashboards.routes import DashboardSource, router
from experiments.schema import parse_experiment
from gateway import launcher
from gateway.eventlog import store, tables
from metric_events import START, experiment_config, generate

pytestmark = pytest.mark.slow


def test_slow_and_oversized_clients_are_cut_off_while_the_service_answers(tmp_path, gateway_artifacts):
    write_two_arm_experiment(tmp_path / "experiments", *gateway_artifacts)
    gateway = GatewayProcess(tmp_path, tmp_path / "experiments", "--no-access-log",
                             env={"ABGATE_HEADER_TIMEOUT_S": "1", "ABGATE_MAX_HEADER_BYTES": "8192"})
    host, port = "127.0.0.1", gateway.port
    try:
        slow = []
        for _ in range(16):  # slowloris: a request line, then a header byte now and then
            s = socket.create_connection((host, port))
            s.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        started = time.monotonic()
        ok = httpx.post(gateway.url + "/v1/search", json={"query": "vitamin d", "unit_id": "u"}, timeout=10)
        assert ok.status_code == 200  # the service answers while they hang
        closed = 0
        for s in slow:
            s.settimeout(5)
            try:
                while time.monotonic() - started < 5:
                    s.sendall(b"X")
                    if s.recv(1024) == b"":
                        closed += 1
                        break
            except (ConnectionError, socket.timeout, OSError):
                closed += 1
            finally:
                s.close()
        assert closed == 16 and time.monotonic() - started < 8
        big = socket.create_connection((host, port))
        big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        big.settimeout(5)
        assert big.recv(4096).startswith(b"HTTP/1.1 431")
        big.close()
    finally:
        gateway.stop()


def test_without_keys_the_read_surface_is_open_only_on_loopback(tmp_path, gateway_artifacts):
    write_two_arm_experiment(tmp_path / "experiments", *gateway_artifacts)
    env = {"ABGATE_DSN": f"chdb://{tmp_path / 'store'}", "ABGATE_SPOOL_DIR": str(tmp_path / "spool"),
           "ABGATE_STATE_FILE": str(tmp_path / "state.json"), "ABGATE_ADMIN_API_KEY": "",
           "ABGATE_IMPRESSION_KEYS": "1:dGVzdHMtaW1wcmVzc2lvbi1rZXktMzItYnl0ZXMhIQ=="}
    for host, expected in (("127.0.0.1", 200), ("0.0.0.0", 403)):
        gateway = launcher.GatewayProcess(["--experiments", str(tmp_path / "experiments")], env=env, host=host,
                                          log_path=tmp_path / f"{host}.log").start()
        try:
            url = f"http://127.0.0.1:{gateway.port}"
            for path in ("/v1/experiments", "/v1/experiments/flat-vs-hnsw", "/dashboard",
                         "/dashboard/flat-vs-hnsw/report.json"):
                r = httpx.get(url + path, timeout=60)
                assert r.status_code == expected, (host, path, r.text)
                assert "salt" not in r.text
            assert httpx.post(url + "/v1/search", json={"query": "q", "unit_id": "u"}).status_code == 200
        finally:
            gateway.stop()
        if expected == 200:
            assert "open without a key" in (tmp_path / f"{host}.log").read_text()


def test_concurrent_report_reads_make_one_build(tmp_path):
    client = store.connect(f"chdb://{tmp_path / 'store'}")
    tables.migrate(client)
    generate("busy", {"control": 0.25, "treatment": 0.3}, units=400, days=3, seed=3).insert(client)
    exp, problems = parse_experiment(experiment_config("busy", days=3))
    assert not problems
    source = DashboardSource(lambda: {exp.name: exp}, lambda: client, ttl_s=60)
    app = Litestar(route_handlers=[router], state=State({"dashboard_source": source}))
    with TestClient(app) as http, ThreadPoolExecutor(20) as pool:
        barrier = threading.Barrier(20)

        def get(_):
            barrier.wait()
            return http.get("/dashboard/busy/report.json")
        answers = list(pool.map(get, range(20)))
        assert [a.status_code for a in answers] == [200] * 20
        assert source.builds == 1 and len({a.text for a in answers}) == 1
        assert http.get("/dashboard/busy").status_code == 200 and source.builds == 1  # cached within the ttl
    source.clock = lambda: time.monotonic() + 120  # past the ttl: the next read rebuilds
    assert source.report("busy", exp) and source.builds == 2
    client.close()
    assert START  # the synthetic log starts where experiment_config says
