"""HTTP edge cases and idempotent feedback, on a real `abgate serve` (uvicorn, the real model, chdb), over real
sockets: deeply nested and empty bodies, strict types, invisible queries, Content-Type, unmatched routes, a
client that disconnects mid-body, JSON-only logs, and replayed feedback stored once (docs/gateway.md, "Limits and
errors" and "Idempotent feedback")."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from conftest import GatewayProcess, write_two_arm_experiment

pytestmark = pytest.mark.slow
QUERY = "Vitamin D deficiency is linked to tuberculosis."


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, gateway_artifacts):
    workdir = tmp_path_factory.mktemp("edges")
    write_two_arm_experiment(workdir / "experiments", *gateway_artifacts)
    process = GatewayProcess(workdir, workdir / "experiments", "--no-access-log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(gateway):
    with httpx.Client(base_url=gateway.url, timeout=30) as c:
        yield c


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] and body["request_id"], body
    assert response.headers["x-request-id"] == body["request_id"]
    return body


def _counted(client: httpx.Client) -> dict[tuple[str, str, str], float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("abgate_http_requests_total{"):
            labels, value = line[len("abgate_http_requests_total{"):].rsplit("} ", 1)
            parts = dict(part.split("=", 1) for part in labels.split(","))
            out[(parts["method"].strip('"'), parts["route"].strip('"'), parts["status"].strip('"'))] = float(value)
    return out


def _post(client: httpx.Client, path: str, body: bytes, content_type: str | None = "application/json"):
    headers = {"content-type": content_type} if content_type else {}
    return client.post(path, content=body, headers=headers)


def test_deeply_nested_json_is_a_client_error_not_a_500(client):
    arrays = b"[" * 1024 + b"]" * 1024                               # 2 KB
    objects = b'{"a":' * 340 + b"1" + b"}" * 340
    in_a_field = b'{"query": "q", "unit_id": "u", "filters": {"f": ' + arrays + b"}}"
    for path in ("/v1/search", "/v1/feedback"):
        for body in (arrays, objects, in_a_field):
            response = _post(client, path, body)
            assert response.status_code in (400, 422), (path, body[:40], response.text)
            _error(response, response.status_code)
    assert _error(_post(client, "/v1/search", arrays), 422)["error"].startswith("the body must be a JSON object")


def test_types_are_strict(client):
    k = _error(client.post("/v1/search", json={"query": QUERY, "unit_id": "u", "k": "10"}), 422)
    assert k["field"] == "k" and "got `str`" in k["error"]
    assert _error(client.post("/v1/search", json={"query": QUERY, "unit_id": 7}), 422)["field"] == "unit_id"
    served = client.post("/v1/search", json={"query": QUERY, "unit_id": "strict", "k": 3}).json()
    first = served["results"][0]
    base = {"impression_id": served["impression_id"], "type": "dwell", "doc_id": first["doc_id"], "position": 1,
            "value": 12.5}
    for field, wrong in (("position", "1"), ("position", 1.0), ("value", "12.5"), ("doc_id", 5)):
        response = client.post("/v1/feedback", json=base | {field: wrong})
        assert _error(response, 422)["field"] == field, (field, wrong)
    assert client.post("/v1/feedback", json=base | {"value": 12}).status_code == 202  # an int is a number


def test_empty_and_malformed_bodies_say_a_json_body_is_required(client):
    for path in ("/v1/search", "/v1/feedback"):
        empty = _error(_post(client, path, b""), 400)
        assert empty["error"].startswith("a JSON body is required"), empty
    garbage = _error(_post(client, "/v1/search", b"{not json"), 400)
    assert "not valid JSON" in garbage["error"]


@pytest.mark.parametrize("query", [" ", "\t\n  \r", "\x00", "\x00\x01\x1f", "\u200b\u00a0", "\x7f \x00"])
def test_a_query_without_visible_characters_is_refused(client, query):
    body = _error(client.post("/v1/search", json={"query": query, "unit_id": "u"}), 422)
    assert body["field"] == "query" and "visible" in body["error"]


def test_post_endpoints_need_json_content_type(client):
    search = json.dumps({"query": QUERY, "unit_id": "ctype", "k": 1}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                         None):
        for path in ("/v1/search", "/v1/feedback"):
            body = _error(_post(client, path, search, content_type), 415)
            assert body["field"] == "Content-Type" and "application/json" in body["error"]
    assert _post(client, "/v1/search", search, "application/json; charset=utf-8").status_code == 200
    assert _post(client, "/v1/search", search, "Application/JSON").status_code == 200


def test_unmatched_routes_get_a_request_id_and_are_counted(client):
    before = _counted(client)
    missing = _error(client.get("/v1/nothing-here", headers={"X-Request-ID": "edge-404"}), 404)
    assert missing["request_id"] == "edge-404"
    _error(client.get("/v1/search"), 405)
    _error(client.delete("/v1/feedback"), 405)
    after = _counted(client)
    assert after[("GET", "unmatched", "404")] - before.get(("GET", "unmatched", "404"), 0) == 1
    assert after[("GET", "unmatched", "405")] - before.get(("GET", "unmatched", "405"), 0) == 1
    assert after[("DELETE", "unmatched", "405")] - before.get(("DELETE", "unmatched", "405"), 0) == 1


def test_a_client_disconnect_is_a_499_not_a_500_and_every_log_line_is_json(gateway, client):
    host, port = gateway.url.removeprefix("http://").split(":")
    for _ in range(3):  # headers promise 1000 bytes; the client sends 10 and hangs up
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(b"POST /v1/search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"query\": ")
            time.sleep(0.1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:  # uvicorn's own warning: bad HTTP
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        sock.recv(1024)
    deadline = time.monotonic() + 10
    while _counted(client).get(("POST", "/v1/search", "499"), 0) < 3:
        assert time.monotonic() < deadline, _counted(client)
        time.sleep(0.1)
    assert not [key for key in _counted(client) if key[2] == "500"], _counted(client)
    lines = [line for line in gateway.read_log().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    disconnects = [r for r in records if r.get("event") == "client disconnected"]
    assert len(disconnects) >= 3 and {r["status"] for r in disconnects} == {499}
    assert all(r.get("request_id") for r in disconnects)
    assert any(r.get("logger", "").startswith("uvicorn") for r in records), "uvicorn's warning went elsewhere"
    assert not any(r.get("level") == "error" for r in records), [r for r in records if r.get("level") == "error"]


# ---- idempotent feedback ------------------------------------------------------------------------------------

REPLAYS = 50


def test_replayed_feedback_is_stored_once_and_counts_once(tmp_path, gateway_artifacts):
    from experiments.custom_metrics import definitions, parse_custom_metrics
    from experiments.loader import load_folder
    from experiments.metrics_sql import collect
    from gateway.eventlog import store

    write_two_arm_experiment(tmp_path / "experiments", *gateway_artifacts)
    gateway = GatewayProcess(tmp_path, tmp_path / "experiments", "--no-access-log")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            served = c.post("/v1/search", json={"query": QUERY, "unit_id": "replayer", "k": 5}).json()
            first, second = served["results"][:2]

            def send(doc: dict, type: str, **extra) -> str:
                response = c.post("/v1/feedback", json={"impression_id": served["impression_id"], "type": type,
                                                        "doc_id": doc["doc_id"], "position": doc["position"],
                                                        **extra})
                assert response.status_code == 202, response.text
                return response.json()["event_id"]

            clicks = {send(first, "click") for _ in range(REPLAYS)}
            keyed = {send(first, "conversion", value=10.0, idempotency_key="order-17") for _ in range(REPLAYS)}
            dwells = {send(first, "dwell", value=40.0) for _ in range(REPLAYS)}
            other_click = send(second, "click", idempotency_key="ignored-for-clicks")
            unkeyed = [send(first, "conversion") for _ in range(3)]
        assert len(clicks) == 1 and len(keyed) == 1 and len(dwells) == 1, (clicks, keyed, dwells)
        assert other_click not in clicks and len(set(unkeyed)) == 3 and not set(unkeyed) & keyed
    finally:
        assert gateway.stop() == 0  # flushes the writer and frees the embedded store

    with store.connect(f"chdb://{tmp_path / 'store'}") as db:
        rows = dict(db.query("SELECT type, count() FROM abgate.feedback_unique GROUP BY type").result_rows)
        ids = dict(db.query("SELECT type, uniqExact(event_id) FROM abgate.feedback GROUP BY type").result_rows)
        assert rows == ids == {"click": 2, "conversion": 1 + 3, "dwell": 1}, (rows, ids)
        custom, problems = parse_custom_metrics([
            {"name": "top3_ctr", "numerator": {"event": "click", "filters": [
                {"field": "position", "op": "<=", "value": 3}]}, "denominator": {"event": "impression"}},
            {"name": "first_clicks", "numerator": {"event": "click", "filters": [
                {"field": "position", "op": "=", "value": 1}]}},
            {"name": "orders", "numerator": {"event": "conversion"}},
            {"name": "order_value", "numerator": {"event": "conversion", "aggregate": "sum"}},
        ])
        assert not problems
        experiment = load_folder(tmp_path / "experiments").experiments["flat-vs-hnsw"]
        stats = collect(db, experiment, metrics=definitions(custom)).stats
    arm = served["arm"]
    top3 = stats["top3_ctr"][arm]
    assert (top3.n, top3.m_sum, top3.d_sum) == (1, 2, 1)        # two documents clicked, 50 times each: 2 / 1
    assert (stats["first_clicks"][arm].n, stats["first_clicks"][arm].sum) == (1, 1)
    assert stats["orders"][arm].sum == 1 + 3                     # the keyed one once, each unkeyed one
    assert stats["order_value"][arm].sum == pytest.approx(10.0 + 3 * 1.0)
