"""The gateway end to end: a real `abgate serve` process (uvicorn), the real ONNX encoder, real FAISS indexes,
the real embedded ClickHouse (chdb) event log, over real HTTP."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from conftest import GatewayProcess, two_arm_gateway, write_two_arm_experiment
from experiments.loader import load_folder
from gateway.assignment import Assigner

pytestmark = pytest.mark.slow
ADMIN = {"X-API-Key": "test-key"}
QUERIES = ["0-dimensional biomaterials show inductive properties.",
           "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
           "Vitamin D deficiency is linked to tuberculosis."]


@pytest.fixture(scope="module")
def server(tmp_path_factory, gateway_artifacts):
    gateway = two_arm_gateway(tmp_path_factory.mktemp("gateway"), gateway_artifacts, "--max-wait-ms", "5")
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def units_by_arm(experiments_dir) -> dict[str, list[str]]:
    assigner = Assigner(list(load_folder(experiments_dir).experiments.values()), "retrieval")
    out: dict[str, list[str]] = {}
    for i in range(200):
        out.setdefault(assigner.assign(f"user-{i}").arm.name, []).append(f"user-{i}")
    return out


def test_each_arm_returns_exactly_its_offline_search(server, client, gateway_artifacts, baseline_encoder):
    from gateway.search import VectorIndex

    _, flat_dir, hnsw_dir = gateway_artifacts
    offline = {"flat": VectorIndex.load(flat_dir, gpu=False), "hnsw": VectorIndex.load(hnsw_dir, gpu=False)}
    units = units_by_arm(server.experiments)
    assert set(units) == {"flat", "hnsw"}
    for arm, unit_ids in units.items():
        for query in QUERIES:
            response = client.post("/v1/search", json={"query": query, "unit_id": unit_ids[0], "k": 10})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["experiment"] == "flat-vs-hnsw" and body["arm"] == arm
            expected = offline[arm].search(baseline_encoder.encode([query]), 10)[0]
            assert [r["doc_id"] for r in body["results"]] == [h.doc_id for h in expected]
            assert [r["position"] for r in body["results"]] == list(range(1, 11))
            assert [r["score"] for r in body["results"]] == pytest.approx([h.score for h in expected], abs=1e-5)


def test_assignment_is_sticky_across_requests(server, client):
    arms = {client.post("/v1/search", json={"query": QUERIES[0], "unit_id": "sticky-1"}).json()["arm"]
            for _ in range(5)}
    assert len(arms) == 1


def test_feedback_is_checked_against_served_impressions(client):
    body = client.post("/v1/search", json={"query": QUERIES[1], "unit_id": "fb-user", "k": 5}).json()
    first = body["results"][0]
    ok = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                           "doc_id": first["doc_id"], "position": 1})
    assert ok.status_code == 202 and ok.json()["arm"] == body["arm"]
    dwell = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "dwell",
                                              "doc_id": first["doc_id"], "position": 1, "value": 12.5})
    assert dwell.status_code == 202
    unknown = client.post("/v1/feedback", json={"impression_id": "made-up-id", "type": "click",
                                                "doc_id": first["doc_id"], "position": 1})
    assert unknown.status_code == 404 and unknown.json()["field"] == "impression_id"
    wrong_doc = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                                  "doc_id": "not-shown", "position": 1})
    assert wrong_doc.status_code == 422 and wrong_doc.json()["field"] == "doc_id"
    wrong_pos = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                                  "doc_id": first["doc_id"], "position": 3})
    assert wrong_pos.status_code == 422 and wrong_pos.json()["field"] == "position"
    no_value = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "dwell",
                                                 "doc_id": first["doc_id"], "position": 1})
    assert no_value.status_code == 422 and no_value.json()["field"] == "value"


def test_limits_answer_413_and_422_json_naming_the_field(client):
    big = client.post("/v1/search", content=b'{"query": "' + b"x" * 70_000 + b'", "unit_id": "u"}',
                      headers={"content-type": "application/json"})
    assert big.status_code == 413 and "larger than" in big.json()["error"]
    cases = [({"query": "x" * 1001, "unit_id": "u"}, "query"), ({"query": "q", "unit_id": "u", "k": 0}, "k"),
             ({"query": "q", "unit_id": "u", "k": 101}, "k"), ({"query": "", "unit_id": "u"}, "query"),
             ({"query": "q"}, "unit_id"), ({"query": "q", "unit_id": "u", "extra": 1}, "extra")]
    for body, field in cases:
        response = client.post("/v1/search", json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["field"] == field, (body, response.json())
    garbage = client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"})
    assert 400 <= garbage.status_code < 500 and "error" in garbage.json()
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["status"] == 404


def test_filters_keep_only_matching_documents(client):
    plain = client.post("/v1/search", json={"query": QUERIES[2], "unit_id": "filter-user", "k": 5}).json()
    meta = plain["results"][0]["metadata"]
    assert meta, "the test index must carry document metadata (title) for the filter test to mean anything"
    key, value = next(iter(meta.items()))
    filtered = client.post("/v1/search", json={"query": QUERIES[2], "unit_id": "filter-user", "k": 5,
                                               "filters": {key: value}}).json()
    assert filtered["results"] and all(r["metadata"][key] == value for r in filtered["results"])


def test_experiments_health_and_docs(client):
    closed = client.get("/v1/experiments")  # a key is configured: the read surface needs it
    assert closed.status_code == 401 and closed.headers["www-authenticate"].startswith("Basic")
    assert "salt" not in closed.text and "experiments" not in closed.json()
    listing = client.get("/v1/experiments", headers=ADMIN).json()
    assert [e["name"] for e in listing["experiments"]] == ["flat-vs-hnsw"]
    assert listing["experiments"][0]["serving_status"] == "running"
    one = client.get("/v1/experiments/flat-vs-hnsw", auth=("any", "test-key")).json()  # basic auth works too
    assert one["arms"][1]["name"] == "hnsw" and "salt" not in one  # never served: it predicts every arm
    assert client.get("/v1/experiments/nope", headers=ADMIN).status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and len(ready["indexes"]) == 2 and len(ready["encoders"]) == 1
    schema = client.get("/docs/openapi.json").json()
    assert "/v1/search" in schema["paths"] and "/v1/feedback" in schema["paths"]
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == "abc-123"


def test_concurrent_queries_are_micro_batched_and_counted(client, server):
    async def burst():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            return await asyncio.gather(*(c.post("/v1/search", json={"query": f"{QUERIES[i % 3]} {i}",
                                                                       "unit_id": f"burst-{i}"})
                                          for i in range(64)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    metrics = client.get("/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith("abgate_microbatch_size_bucket")]
    ones = next(float(line.rsplit(" ", 1)[1]) for line in sizes if 'le="1.0"' in line)
    total = next(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                 if line.startswith("abgate_microbatch_size_count"))
    assert total > 0 and ones < total, "some ONNX calls must have carried more than one query"
    assert 'abgate_search_requests_total{arm="flat",experiment="flat-vs-hnsw"}' in metrics
    assert "abgate_search_latency_seconds_bucket" in metrics
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the writer inserts within its flush interval
        written = next(float(line.rsplit(" ", 1)[1]) for line in client.get("/metrics").text.splitlines()
                       if line.startswith("abgate_events_written_total"))
        if written >= 64:
            break
        time.sleep(0.5)
    assert written >= 64


def test_admin_needs_the_key_and_refuses_unsafe_reload(server, client, gateway_artifacts):
    assert client.post("/v1/admin/reload").status_code == 401
    write_two_arm_experiment(server.experiments, *gateway_artifacts, weights=(80, 20))
    refused = client.post("/v1/admin/reload", headers=ADMIN)
    assert refused.status_code == 422
    assert refused.json()["field"] == "arms" and "break the analysis" in refused.json()["error"]
    assert client.post("/v1/search", json={"query": "q", "unit_id": "u"}).status_code == 200  # still serving
    write_two_arm_experiment(server.experiments, *gateway_artifacts)  # back to 50/50: accepted
    assert client.post("/v1/admin/reload", headers=ADMIN).status_code == 200


def test_reload_under_load_drops_no_request_and_sighup_reloads(server, client, gateway_artifacts):
    (server.experiments / "later.yaml").write_text(
        (server.experiments / "flat-vs-hnsw.yaml").read_text()
        .replace("name: flat-vs-hnsw", "name: later").replace("status: running", "status: draft"))

    async def load_and_reload():
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            searches = [c.post("/v1/search", json={"query": QUERIES[i % 3], "unit_id": f"r-{i}"}) for i in range(60)]
            reloads = [c.post("/v1/admin/reload", headers=ADMIN) for _ in range(2)]
            return await asyncio.gather(*searches, *reloads)

    responses = asyncio.run(load_and_reload())
    assert [r.status_code for r in responses] == [200] * len(responses)
    (server.experiments / "later.yaml").unlink()
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "later" in [e["name"] for e in client.get("/v1/experiments", headers=ADMIN).json()["experiments"]]:
        assert time.monotonic() < deadline, "SIGHUP did not reload the experiments folder"
        time.sleep(0.2)


def test_stopped_experiment_sends_everyone_to_control_and_events_reach_clickhouse(server, client):
    stop = client.post("/v1/admin/experiments/flat-vs-hnsw/stop", headers=ADMIN)
    assert stop.status_code == 200 and stop.json()["serving_status"] == "stopped"
    arms = {client.post("/v1/search", json={"query": QUERIES[0], "unit_id": f"after-stop-{i}"}).json()["arm"]
            for i in range(30)}
    assert arms == {"flat"}
    assert client.post("/v1/admin/experiments/nope/stop", headers=ADMIN).status_code == 404
    assert server.stop() == 0
    from gateway.eventlog import store

    with store.connect(f"chdb://{server.workdir / 'store'}") as db:
        rows = db.query("SELECT arm, enrolled, count() FROM impressions GROUP BY arm, enrolled").result_rows
        clicks = db.query("SELECT count() FROM feedback WHERE type = 'click'").result_rows[0][0]
    by = {(arm, bool(enrolled)): n for arm, enrolled, n in rows}
    assert by[("hnsw", True)] > 0 and by[("flat", True)] > 0
    assert by[("flat", False)] >= 30  # after the stop: control, not enrolled
    assert clicks >= 1


def _click(client: httpx.Client, body: dict) -> httpx.Response:
    first = body["results"][0]
    return client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                             "doc_id": first["doc_id"], "position": first["position"]})


def test_feedback_after_a_restart_is_verified_by_the_signed_id(tmp_path, gateway_artifacts):
    """The id carries and signs what feedback needs, so a restarted process (graceful, or after kill -9) checks
    feedback on an impression the previous one served: no memory, no store lookup."""
    write_two_arm_experiment(tmp_path / "experiments", *gateway_artifacts)
    gateway = GatewayProcess(tmp_path, tmp_path / "experiments")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            served = c.post("/v1/search", json={"query": QUERIES[2], "unit_id": "restart-1", "k": 5}).json()
        assert gateway.stop() == 0
        gateway = GatewayProcess(tmp_path, tmp_path / "experiments")
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            ok = _click(c, served)
            assert ok.status_code == 202, ok.text
            assert (ok.json()["arm"], ok.json()["experiment"]) == (served["arm"], served["experiment"])
            again = _click(c, served)  # the same click again is a replay (one row below)
            assert again.status_code == 202 and again.json()["event_id"] == ok.json()["event_id"]
            wrong = c.post("/v1/feedback", json={"impression_id": served["impression_id"], "type": "click",
                                                 "doc_id": "not-shown", "position": 1})
            assert wrong.status_code == 422 and wrong.json()["field"] == "doc_id"
            unknown = c.post("/v1/feedback", json={"impression_id": "never-served-id", "type": "click",
                                                   "doc_id": "1", "position": 1})
            assert unknown.status_code == 404 and "did not sign it" in unknown.json()["error"]
            unflushed = c.post("/v1/search", json={"query": QUERIES[0], "unit_id": "restart-2", "k": 5}).json()
        gateway.process.kill()  # within the flush interval: the impression is in the spool, not the store
        gateway.process.wait(10)
        gateway = GatewayProcess(tmp_path, tmp_path / "experiments")  # replays the spool, then is ready
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            replayed = _click(c, unflushed)
            assert replayed.status_code == 202, replayed.text
            assert replayed.json()["arm"] == unflushed["arm"]
    finally:
        gateway.stop()
    from gateway.eventlog import store

    with store.connect(f"chdb://{tmp_path / 'store'}") as db:
        clicks = db.query("SELECT impression_id, unit_id, arm FROM feedback_unique ORDER BY ts").result_rows
    assert [row[0] for row in clicks] == [served["impression_id"], unflushed["impression_id"]]
    assert [row[1:] for row in clicks] == [("restart-1", served["arm"]), ("restart-2", unflushed["arm"])]


def _cuda_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="no CUDA provider in this onnxruntime: install onnxruntime-gpu "
                                                  "and faiss-gpu on a GPU host (bench/gpu.sh)")
def test_gpu_gateway_serves_the_cpu_results(tmp_path, gateway_artifacts, baseline_encoder):
    import faiss

    from gateway.search import VectorIndex

    encoder_dir, flat_dir, hnsw_dir = gateway_artifacts
    write_two_arm_experiment(tmp_path / "experiments", encoder_dir, flat_dir, hnsw_dir)
    gateway = GatewayProcess(tmp_path, tmp_path / "experiments", "--device", "cuda")
    try:
        assert "CUDAExecutionProvider" in gateway.read_log()  # the runtime logs the provider in use
        cpu_index = VectorIndex.load(flat_dir, gpu=False)
        unit = units_by_arm(tmp_path / "experiments")["flat"][0]
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            for query in QUERIES:
                body = c.post("/v1/search", json={"query": query, "unit_id": unit, "k": 10}).json()
                expected = cpu_index.search(baseline_encoder.encode([query]), 10)[0]
                # fp32 on GPU vs CPU: same documents, scores within float tolerance (ties may swap).
                assert set(r["doc_id"] for r in body["results"]) == {h.doc_id for h in expected}
                assert [r["score"] for r in body["results"]] == pytest.approx([h.score for h in expected], abs=1e-3)
        if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
            assert "gpu=True" in gateway.read_log() or '"gpu": true' in gateway.read_log()
    finally:
        gateway.stop()


def test_without_experiments_the_default_arm_serves_and_admin_is_off(tmp_path, gateway_artifacts):
    from litestar.testing import TestClient

    from gateway.app import create_app
    from gateway.settings import Settings

    encoder_dir, flat_dir, _ = gateway_artifacts
    (tmp_path / "experiments").mkdir()
    settings = Settings(experiments_dir=str(tmp_path / "experiments"), default_encoder=str(encoder_dir),
                        default_index=str(flat_dir), log_events=False, state_file=None, access_log=False)
    with TestClient(create_app(settings)) as c:
        body = c.post("/v1/search", json={"query": QUERIES[0], "unit_id": "anyone", "k": 3}).json()
        assert body["experiment"] is None and body["arm"] == "default" and len(body["results"]) == 3
        assert c.post("/v1/admin/reload", headers=ADMIN).status_code == 403
        assert c.get("/readyz").json()["events"] == "off"
        metrics = c.get("/metrics").text
        assert 'abgate_http_requests_total{method="POST",route="/v1/search",status="200"} 1.0' in metrics
