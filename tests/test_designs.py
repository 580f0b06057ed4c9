"""Interleaving and shadow experiments through a real `abgate serve`: the real encoder, real FAISS (a flat and
an HNSW index of the same documents as the two arms), real chdb, real HTTP."""

from __future__ import annotations

import time

import httpx
import pytest

from conftest import GatewayProcess, write_two_arm_experiment
from dashboards.designs import render_page, render_text
from experiments.designs_report import rbo
from experiments.interleaving import common_prefix
from experiments.loader import load_folder
from experiments.report import build_report
from gateway.eventlog import store
from gateway.interleaving import interleave
from gateway.search import VectorIndex

pytestmark = pytest.mark.slow
QUERIES = ["0-dimensional biomaterials show inductive properties.",
           "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
           "Vitamin D deficiency is linked to tuberculosis.", "Smoking causes lung cancer.",
           "Aspirin reduces the risk of heart attack."]


def _experiment(folder, artifacts, name: str, design: str, extra: str = ""):
    path = write_two_arm_experiment(folder, *artifacts, name=name)
    text = path.read_text().replace("design: {mde: 0.02, sequential: true}",
                                    f"design: {{type: {design}, mde: 0.02, sequential: true}}{extra}")
    path.write_text(text)


def _flush(gateway) -> None:
    assert gateway.stop() == 0  # SIGINT: the writer flushes before exit


def test_interleaved_search_merges_both_arms_and_replays_exactly(tmp_path, gateway_artifacts, baseline_encoder):
    encoder_dir, flat_dir, hnsw_dir = gateway_artifacts
    _experiment(tmp_path / "experiments", gateway_artifacts, "inter", "interleaving")
    gateway = GatewayProcess(tmp_path, tmp_path / "experiments", "--no-access-log")
    served, units = [], {}
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for i in range(30):
                r = client.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "unit_id": f"u{i % 10}"})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["arm"] == "interleaved" and body["experiment"] == "inter"
                served.append(body)
                units[body["impression_id"]] = f"u{i % 10}"
                first = body["results"][0]
                f = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                                      "doc_id": first["doc_id"], "position": 1})
                assert f.status_code == 202, f.text
    finally:
        _flush(gateway)
    experiment = load_folder(tmp_path / "experiments").experiments["inter"]
    with store.connect(f"chdb://{tmp_path / 'store'}") as db:
        rows = {r[0]: r for r in db.query("SELECT impression_id, arms, teams, rankings, seed FROM interleavings "
                                          "FINAL").result_rows}
        assert len(rows) == len(served)
        flat = VectorIndex.load(flat_dir, gpu=False)
        vectors = baseline_encoder.encode([QUERIES[0]])
        own = [h.doc_id for h in flat.search(vectors, 10)[0]]
        for body in served:
            _, arms, teams, rankings, seed = rows[body["impression_id"]]
            assert list(arms) == ["flat", "hnsw"]
            replay = interleave([list(r) for r in rankings], 10, seed)
            assert list(replay.doc_ids) == [r["doc_id"] for r in body["results"]]  # exact replay
            assert list(replay.teams) == list(teams)
        first_body = served[0]
        assert list(rows[first_body["impression_id"]][3][0]) == own  # the control's own ranking is logged
        report = build_report(db, experiment)
    assert report["design"] == "interleaving" and report["traffic"]["impressions"] == 30
    (pref,) = report["preferences"]
    # Both arms search the same documents (exact vs HNSW) and mostly rank the same one first: a click there
    # lies in their common prefix, its team is a coin flip, and it counts for no arm (Chapelle et al. 2012).
    in_prefix = {b["impression_id"] for b in served if common_prefix([list(r) for r in rows[b["impression_id"]][3]])}
    assert report["traffic"]["clicks"] == 30 and report["traffic"]["clicks_in_common_prefix"] == len(in_prefix) > 0
    assert pref["units"] == len({units[b["impression_id"]] for b in served if b["impression_id"] not in in_prefix})
    assert report["verdict"]["status"] in ("inconclusive", "insufficient_data")
    assert report["balance"]["status"] in ("ok", "alert") and sum(report["balance"]["positions"].values()) > 0
    page = render_page(report)
    assert "id='preferences'" in page and "<svg" in page
    assert "VERDICT" in render_text(report)


def test_shadow_runs_the_candidate_off_the_request_path(tmp_path, gateway_artifacts):
    _experiment(tmp_path / "experiments", gateway_artifacts, "shadowed", "shadow", "\nshadow: {sample: 1.0}")
    gateway = GatewayProcess(tmp_path, tmp_path / "experiments", "--no-access-log")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            for i in range(20):
                r = client.post("/v1/search", json={"query": QUERIES[i % len(QUERIES)], "unit_id": f"u{i}"})
                assert r.status_code == 200 and r.json()["arm"] == "flat"  # users only ever see control
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                metrics = client.get("/metrics").text
                if 'abgate_shadow_jobs_total{outcome="done"} 20.0' in metrics:
                    break
                time.sleep(0.2)
            assert 'abgate_shadow_jobs_total{outcome="done"} 20.0' in metrics
    finally:
        _flush(gateway)
    experiment = load_folder(tmp_path / "experiments").experiments["shadowed"]
    with store.connect(f"chdb://{tmp_path / 'store'}") as db:
        assert db.query("SELECT count() FROM shadow_results FINAL").result_rows[0][0] == 20
        report = build_report(db, experiment)
    (arm,) = report["arms"]
    assert arm["arm"] == "hnsw" and arm["requests"] == 20 and arm["errors"] == 0
    assert 0.5 < arm["overlap_at_k"] <= 1.0 and 0.5 < arm["rbo"] <= 1.0  # HNSW finds mostly the same documents
    assert arm["latency_ms"]["p95"] > 0 and report["verdict"]["status"] == "shadow"
    assert "id='shadow'" in render_page(report)


def test_rbo_matches_its_definition():
    assert rbo(list("abcde"), list("abcde")) == pytest.approx(1.0)
    assert rbo(list("abc"), list("xyz")) == 0.0
    # Swapping the top two of otherwise equal lists costs only at depth 1: (1 - p) / p * (0 * p) term.
    p = 0.9
    swapped = rbo(list("abcd"), list("bacd"))
    assert swapped == pytest.approx(1.0 - (1 - p) / p * p, rel=1e-12)
