"""POST /v1/feedback/batch on a real `abgate serve`: all or nothing, the bad event named, ids as the single
endpoint gives them (so retries of either kind collapse), conversions keyed."""

from __future__ import annotations

import httpx
import pytest

from conftest import two_arm_gateway

pytestmark = pytest.mark.slow
QUERIES = ["Vitamin D deficiency is linked to tuberculosis."]


@pytest.fixture(scope="module")
def client(tmp_path_factory, gateway_artifacts):
    gateway = two_arm_gateway(tmp_path_factory.mktemp("gateway"), gateway_artifacts, "--max-wait-ms", "5")
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as c:
            yield c
    finally:
        gateway.stop()


def _feedback_counts(client: httpx.Client) -> dict[str, float]:
    counts = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("abgate_feedback_total{"):
            counts[line.split('type="')[1].split('"')[0]] = float(line.split()[-1])
    return counts


def test_feedback_batch_is_all_or_nothing_and_names_the_bad_event(client):
    body = client.post("/v1/search", json={"query": QUERIES[0], "unit_id": "batch-user", "k": 5}).json()
    first, second = body["results"][0], body["results"][1]
    iid = body["impression_id"]

    def event(kind: str, hit: dict, **extra) -> dict:
        return {"impression_id": iid, "type": kind, "doc_id": hit["doc_id"], "position": hit["position"], **extra}

    before = _feedback_counts(client)
    rejected = {
        "events[1].position": [event("click", second), event("click", first) | {"position": 4}],
        "events[0].idempotency_key": [event("conversion", first)],
        "events[2].value": [event("click", first), event("click", second), event("dwell", second)],
        "events[0].impression_id": [event("click", first) | {"impression_id": "made-up-id"}],
        "events": [],
    }
    for field, events in rejected.items():
        r = client.post("/v1/feedback/batch", json={"events": events})
        assert 400 <= r.status_code < 500 and r.json()["field"] == field, (field, r.text)
    too_many = client.post("/v1/feedback/batch", json={"events": [event("click", first)] * 101})
    assert too_many.status_code == 422 and too_many.json()["field"] == "events"
    assert _feedback_counts(client) == before  # a rejected batch logs none of its events, not even the good ones

    events = [event("click", first), event("dwell", first, value=41.5),
              event("conversion", first, value=19.9, idempotency_key="order-17"), event("click", second)]
    ok = client.post("/v1/feedback/batch", json={"events": events})
    assert ok.status_code == 202
    answered = ok.json()["events"]
    assert [a["arm"] for a in answered] == [body["arm"]] * 4 and len({a["event_id"] for a in answered}) == 4
    # The ids are the ones the single endpoint gives, so a retry of either kind collapses into one row.
    single = client.post("/v1/feedback", json=events[0])
    assert single.status_code == 202 and single.json()["event_id"] == answered[0]["event_id"]
    again = client.post("/v1/feedback/batch", json={"events": events}).json()["events"]
    assert [a["event_id"] for a in again] == [a["event_id"] for a in answered]
    after = _feedback_counts(client)
    assert after.get("conversion", 0) - before.get("conversion", 0) == 2  # accepted twice, stored once
    assert after["click"] - before.get("click", 0) == 5
