"""The click model and simulated users (seeded, exact), the SciFact loader, and the CLI's input checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.errors import InputError
from gateway.launcher import GatewayProcess, free_port
from gateway.simulation.replay import check_loopback
from gateway.simulation.users import ClickModel, Population, load_judgments, make_users, user_rng

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DATA", ROOT.parent / "shared" / "data" / "scifact"))
if not DATA.is_absolute():
    DATA = (ROOT / DATA).resolve()


def click_rates(model: ClickModel, doc_ids, relevance, draws: int = 20_000, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(doc_ids))
    for _ in range(draws):
        for event in model.feedback(doc_ids, relevance, rng):
            if event["type"] == "click":
                counts[event["position"] - 1] += 1
    return counts / draws


def test_click_rates_follow_examination_times_attractiveness():
    model = ClickModel(eta=1.0, p_relevant=0.6, noise=0.05, dwell=False, p_conversion=0.0)
    docs = ["a", "b", "c", "d"]
    relevance = {"a": 1, "c": 1}
    rates = click_rates(model, docs, relevance)
    expected = np.array([0.6 / 1, 0.05 / 2, 0.6 / 3, 0.05 / 4])
    # 20k draws: standard error <= 0.0035, so 4 standard errors is 0.014.
    np.testing.assert_allclose(rates, expected, atol=0.014)
    assert rates[0] > rates[2] > rates[1]  # relevance and position both matter


def test_a_better_ranking_earns_more_clicks_than_a_worse_one():
    model = ClickModel(dwell=False)
    relevance = {"rel": 1}
    good = ["rel"] + [f"x{i}" for i in range(9)]
    bad = [f"x{i}" for i in range(9)] + ["rel"]
    good_clicks = click_rates(model, good, relevance, draws=5_000).sum()
    bad_clicks = click_rates(model, bad, relevance, draws=5_000).sum()
    assert good_clicks > bad_clicks + 0.3  # 0.6 + noise vs 0.06 + noise


def test_graded_relevance_and_zero_noise():
    model = ClickModel(eta=0.0, p_relevant=0.5, noise=0.0)
    assert model.attractiveness(0) == 0.0
    assert model.attractiveness(1) == pytest.approx(0.5)
    assert model.attractiveness(2) == pytest.approx(0.75)
    probs = model.click_probabilities(["a", "b"], {"b": 2})
    np.testing.assert_allclose(probs, [0.0, 0.75])


def test_dwell_and_conversion_follow_relevance():
    model = ClickModel(eta=0.0, p_relevant=1.0, noise=1.0, p_conversion=0.5)
    rng = np.random.default_rng(3)
    relevant_dwell, irrelevant_dwell, conversions, relevant_clicks = [], [], 0, 0
    for _ in range(2_000):
        for event in model.feedback(["r", "i"], {"r": 1}, rng):
            if event["type"] == "dwell":
                (relevant_dwell if event["doc_id"] == "r" else irrelevant_dwell).append(event["value"])
            conversions += event["type"] == "conversion"
            relevant_clicks += event["type"] == "click" and event["doc_id"] == "r"
            assert event["type"] != "conversion" or event["doc_id"] == "r"
    assert np.median(relevant_dwell) == pytest.approx(model.dwell_relevant_s, rel=0.1)
    assert np.median(irrelevant_dwell) == pytest.approx(model.dwell_irrelevant_s, rel=0.1)
    assert conversions / relevant_clicks == pytest.approx(0.5, abs=0.05)


def test_probabilities_are_checked():
    with pytest.raises(InputError, match="probability"):
        ClickModel(p_relevant=1.5)
    with pytest.raises(InputError, match="eta"):
        ClickModel(eta=-1)


def test_users_are_reproducible_and_repeat_visits():
    population = Population(users=500, mean_visits=3.0, mean_searches=2.0)
    ids = [str(i) for i in range(50)]
    users = make_users(population, ids, seed=7)
    again = make_users(population, ids, seed=7)
    other = make_users(population, ids, seed=8)
    assert users == again and users != other
    assert len({u.unit_id for u in users}) == 500
    assert all(len(u.visits) >= 1 and all(len(v) >= 1 for v in u.visits) for u in users)
    visits = np.mean([len(u.visits) for u in users])
    searches = np.mean([len(v) for u in users for v in u.visits])
    assert visits == pytest.approx(3.0, abs=0.2) and searches == pytest.approx(2.0, abs=0.15)
    assert np.mean([u.propensity for u in users]) == pytest.approx(1.0, abs=0.05)
    # Users are independent of each other: a larger population keeps the first users unchanged.
    assert make_users(Population(users=10), ids, seed=7)[:3] == make_users(Population(users=3), ids, seed=7)
    assert user_rng(7, 0).random() == user_rng(7, 0).random()


def test_searches_per_user_are_bounded():
    users = make_users(Population(users=50, mean_visits=20, mean_searches=10, max_searches_per_user=12),
                       ["q"], seed=0)
    assert max(u.searches for u in users) <= 12


def test_loads_scifact_test_judgments(scifact_dir):
    judgments = load_judgments(scifact_dir, "test")
    assert len(judgments.queries) == 300  # SciFact test: 300 judged queries
    assert sum(len(d) for d in judgments.qrels.values()) == 339


def test_bad_qrels_line_is_reported_with_its_number(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "a claim"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n1\td1\t1\n1 d2 1\n")
    with pytest.raises(InputError) as info:
        load_judgments(tmp_path)
    assert info.value.line == 3 and info.value.file.endswith("test.tsv")
    with pytest.raises(InputError, match="not found"):
        load_judgments(tmp_path / "nowhere")


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "ftp://127.0.0.1/",
                                 "https://127.0.0.1:8443"])
def test_only_loopback_targets(url):
    with pytest.raises(InputError, match="loopback"):
        check_loopback(url)


def test_loopback_targets_are_accepted():
    assert check_loopback("http://127.0.0.1:8000/") == "http://127.0.0.1:8000"
    assert check_loopback("http://localhost:1") == "http://localhost:1"


def test_cli_refuses_a_remote_target_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--url", "http://192.168.1.1:80",
                           "--data", str(DATA), "--json"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("abgate: error: --url: ")
    assert "loopback" in json.loads(proc.stdout)["error"]


def test_cli_says_when_no_gateway_answers():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--url", f"http://127.0.0.1:{port}",
                           "--data", str(DATA), "--users", "30"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "abgate serve" in proc.stderr and "Connection refused" in proc.stderr


# --- End to end: real `abgate serve` (real model, FAISS, chdb), real HTTP, then the store is read ---------------



@pytest.mark.slow
def test_simulated_users_reach_the_store_through_a_real_gateway(tmp_path, baseline_encoder_dir, small_index_dir):

    from gateway.eventlog.store import connect

    experiments = tmp_path / "experiments"
    experiments.mkdir()
    (experiments / "aa.yaml").write_text(f"""name: sim-aa
description: simulator end-to-end test
owner: tests
layer: retrieval
unit: user
salt: sim-test
status: running
start: 2020-01-01T00:00:00Z
end: null
allocation: 1.0
control: a
arms:
  - {{name: a, weight: 50, encoder: {baseline_encoder_dir}, index: {small_index_dir}, top_k: 10}}
  - {{name: b, weight: 50, encoder: {baseline_encoder_dir}, index: {small_index_dir}, top_k: 10}}
metrics: {{primary: ctr}}
design: {{alpha: 0.05, mde: 0.02, sequential: true}}
""")
    dsn = f"chdb://{tmp_path / 'store'}"
    env = dict(ABGATE_EXPERIMENTS_DIR=str(experiments), ABGATE_DSN=dsn, ABGATE_SPOOL_DIR=str(tmp_path / "spool"),
               ABGATE_STATE_FILE=str(tmp_path / "state.json"), ABGATE_ACCESS_LOG="false", HF_HUB_OFFLINE="1")
    with GatewayProcess(env=env, log_path=tmp_path / "gateway.log", ready_timeout_s=180) as server:
        proc = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--url", server.url,
                               "--data", str(DATA), "--users", "12", "--seed", "3", "--concurrency", "4", "--json"],
                              capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert "simulate: " in proc.stderr  # progress on stderr, counts on stdout
    # leaving the block stops the gateway with SIGINT: the writer flushes before exit
    assert result["users_done"] == 12 and result["failed_searches"] == 0 and result["failed_feedback"] == 0
    assert result["searches"] == result["planned_searches"] > 12  # repeat visits: more searches than users
    assert result["clicks"] > 0 and result["feedback"] == result["clicks"] + result["dwells"] + result["conversions"]

    client = connect(dsn)
    impressions = client.query("SELECT count(), uniqExact(unit_id), uniqExact(arm) FROM impressions FINAL").result_rows[0]
    assert impressions[0] == result["searches"] and impressions[1] == 12
    by_type = dict(client.query("SELECT type, count() FROM feedback FINAL GROUP BY type").result_rows)
    assert by_type.get("click", 0) == result["clicks"] and by_type.get("dwell", 0) == result["dwells"]
    # Stickiness seen from the log: each simulated user stayed in one arm across all its visits.
    assert client.query("SELECT max(n) FROM (SELECT uniqExact(arm) AS n FROM impressions FINAL GROUP BY unit_id)"
                        ).result_rows[0][0] == 1


def test_demo_looks_every_chunk_up_to_the_budget():
    from experiments.errors import InputError
    from gateway.simulation.demo import looks

    assert looks(None, 2000, 7000) == [2000, 4000, 6000, 7000]
    assert looks(None, 2000, 6000) == [2000, 4000, 6000]
    assert looks([900, 300, 900], 2000, 40000) == [300, 900]  # explicit stages win, once each, in order
    with pytest.raises(InputError, match="at least 1"):
        looks([0, 10], 2000, 40000)
    with pytest.raises(InputError, match="at least 1"):
        looks(None, 0, 40000)


@pytest.mark.slow
def test_demo_second_half_serves_simulates_and_reports(tmp_path, baseline_encoder_dir, small_index_dir):
    """The demo's orchestration on a small index: offline eval, gateway, one stage of users, both reports.
    Both arms are the baseline here, so the 'A/B' must not name a winner either."""
    import argparse
    import shutil

    from gateway.simulation.demo import Context
    from gateway.simulation.demo_traffic import (AA, AB, INTER, evaluate_offline, reset_store_if_stale,
                                                 serve_and_simulate)

    work = tmp_path / "work"
    shutil.copytree(ROOT / "experiments" / "demo", work / "experiments" / "demo")
    for arm in ("baseline", "finetuned"):
        (work / "artifacts" / "encoders").mkdir(parents=True, exist_ok=True)
        (work / "artifacts" / "indexes").mkdir(parents=True, exist_ok=True)
        (work / "artifacts" / "encoders" / arm).symlink_to(baseline_encoder_dir)
        (work / "artifacts" / "indexes" / arm).symlink_to(small_index_dir)
    env = dict(os.environ, HF_HUB_OFFLINE="1", ABGATE_DSN=f"chdb://{work / 'artifacts' / 'demo' / 'store'}")
    ctx = Context(work, DATA, env)
    record = reset_store_if_stale(ctx, fresh=False)
    offline = evaluate_offline(ctx)
    assert offline["baseline"]["ndcg@10"] == offline["finetuned"]["ndcg@10"] > 0.3
    args = argparse.Namespace(fresh_traffic=False, port=free_port(), stages=[40], seed=5, concurrency=4,
                              all_stages=False, keep_serving=False)
    result = serve_and_simulate(ctx, args, offline, record)
    assert [s["users"] for s in result["stages"]] == [40]
    verdicts = result["stages"][0]["verdicts"]
    ab, aa, inter = verdicts[AB], verdicts[AA], verdicts[INTER]
    assert ab["units"] + aa["units"] + inter["units"] == 40  # each user in exactly one of the three experiments
    # The look (from the running gateway, after its backlog drained) saw what the final report from the store sees.
    assert (ab["units"], ab["impressions"]) == (result["ab"]["units"], result["ab"]["impressions"])
    assert ab["winner"] is None and aa["winner"] is None and inter["winner"] is None
    assert result["interleaving"]["status"] in ("inconclusive", "insufficient_data", "no_data")
    assert (work / "artifacts" / "demo" / f"{AB}.html").is_file()
    import contextlib
    import io

    from gateway.simulation.demo_outcome import print_outcome

    with contextlib.redirect_stdout(io.StringIO()) as out:  # not capsys: the demo's children need a real stderr
        print_outcome(result | {"timings": {"total": 1.0}}, as_json=False)
    printed = out.getvalue()
    assert "after     40 users" in printed and "A/A verdict:" in printed and "no winner, as it should be" in printed
    # A second run finds the stage done and replays nothing.
    again = serve_and_simulate(ctx, args, offline, reset_store_if_stale(ctx, fresh=False))
    assert again["stages"] == result["stages"]


# --- The volume study: power and A/A false positives of the CTR test, by simulation ----------------------------

def _judgments_for(n_queries: int):
    from gateway.simulation.users import Judgments

    return Judgments({str(q): f"query {q}" for q in range(n_queries)},
                     {str(q): {f"rel{q}": 1} for q in range(n_queries)})


def test_click_matrix_puts_each_arms_relevant_docs_where_it_ranked_them():
    from gateway.simulation.volume import click_matrix

    judgments = _judgments_for(2)
    model = ClickModel(eta=1.0, p_relevant=0.5, noise=0.0)
    good = click_matrix({"0": ["rel0", "x"], "1": ["rel1"]}, judgments, model, k=3)
    bad = click_matrix({"0": ["x", "rel0"], "1": []}, judgments, model, k=3)
    np.testing.assert_allclose(good, [[0.5, 0, 0], [0.5, 0, 0]])
    np.testing.assert_allclose(bad, [[0, 0.25, 0], [0, 0, 0]])


def test_volume_study_finds_power_for_a_real_difference_and_none_for_aa():
    from gateway.simulation.volume import click_matrix, study, volume_needed

    judgments = _judgments_for(50)
    model = ClickModel()
    # Control ranks the relevant document 3rd, treatment 1st: a large, known CTR difference.
    control = click_matrix({q: ["a", "b", f"rel{q}"] for q in judgments.queries}, judgments, model)
    treatment = click_matrix({q: [f"rel{q}", "a", "b"] for q in judgments.queries}, judgments, model)
    points = study(control, treatment, [20, 400], reps=40, model=model, seed=1)
    small, large = points
    assert small.power_sequential < 0.5 < large.power_sequential
    assert large.power_fixed >= large.power_sequential  # always-valid intervals are wider
    assert large.wrong_sequential == 0 and large.mean_lift > 0.5
    assert volume_needed(points, 0.8) in (400, None) and volume_needed(points, 0.0) == 20
    aa = study(control, control, [400], reps=100, model=model, seed=2)[0]
    assert aa.power_sequential == 0 and aa.wrong_sequential <= 0.05  # false positives at most alpha


def test_volume_study_metrics_per_search_and_their_power():
    from gateway.simulation.volume import _per_search, click_matrix, study

    clicked = np.array([[False, True, True], [False, False, False], [True, False, False]])
    np.testing.assert_allclose(_per_search(clicked, "ctr"), [2, 0, 1])
    np.testing.assert_allclose(_per_search(clicked, "click_share"), [1, 0, 1])
    np.testing.assert_allclose(_per_search(clicked, "mrr"), [0.5, 0, 1])
    with pytest.raises(ValueError, match="unknown metric"):
        _per_search(clicked, "ndcg")
    judgments = _judgments_for(50)
    model = ClickModel()
    control = click_matrix({q: ["a", "b", f"rel{q}"] for q in judgments.queries}, judgments, model)
    treatment = click_matrix({q: [f"rel{q}", "a", "b"] for q in judgments.queries}, judgments, model)
    # Moving the relevant document from 3rd to 1st triples its reciprocal rank: MRR sees it at least as soon.
    ctr, mrr = (study(control, treatment, [150], reps=40, model=model, seed=3, metric=m)[0] for m in ("ctr", "mrr"))
    assert mrr.power_sequential >= ctr.power_sequential and mrr.mean_lift > ctr.mean_lift > 0
    aa = study(control, control, [400], reps=100, model=model, seed=4, metric="mrr")[0]
    assert aa.wrong_sequential <= 0.05
