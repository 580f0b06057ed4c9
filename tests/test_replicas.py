"""Three `abgate serve` replicas without sticky routing: each has its own embedded store and spool, and every
feedback goes to a replica other than the one that served the impression. Signed impression ids make that
work; SIGTERM drains a replica under load without losing or doubling an acknowledged event."""

from __future__ import annotations

import random
import signal
import threading
import time

import httpx
import pytest

from conftest import GatewayProcess, write_two_arm_experiment
from gateway.eventlog import store

pytestmark = pytest.mark.slow
QUERIES = ["0-dimensional biomaterials show inductive properties.", "Vitamin D deficiency is linked to tuberculosis.",
           "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors."]
DRAIN = {"ABGATE_DRAIN_S": "1.5", "ABGATE_EVENTS_FLUSH_S": "0.2"}


def _replicas(tmp_path, gateway_artifacts, n: int = 3) -> list:
    experiments = tmp_path / "experiments"
    write_two_arm_experiment(experiments, *gateway_artifacts)
    out = []
    for i in range(n):
        workdir = tmp_path / f"replica-{i}"
        workdir.mkdir()
        out.append(GatewayProcess(workdir, experiments, "--no-access-log", env=DRAIN))
    return out


def _stored(replicas) -> tuple[list[str], list[str]]:
    impressions, feedback = [], []
    for r in replicas:
        with store.connect(f"chdb://{r.workdir / 'store'}") as db:
            impressions += [row[0] for row in db.query("SELECT impression_id FROM impressions FINAL").result_rows]
            feedback += [row[0] for row in db.query("SELECT event_id FROM feedback FINAL").result_rows]
    return impressions, feedback


def test_feedback_to_any_replica_is_verified_and_forgeries_are_not(tmp_path, gateway_artifacts):
    replicas = _replicas(tmp_path, gateway_artifacts)
    clients = [httpx.Client(base_url=r.url, timeout=30) for r in replicas]
    accepted = forged_accepted = legit = 0
    try:
        for i in range(60):
            served_by = i % 3
            body = clients[served_by].post("/v1/search", json={"query": QUERIES[i % 3], "unit_id": f"u{i}",
                                                               "k": 5}).json()
            doc = body["results"][0]
            other = clients[(served_by + 1 + i % 2) % 3]   # never the replica that served it
            legit += 1
            r = other.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                                 "doc_id": doc["doc_id"], "position": 1})
            accepted += r.status_code == 202
            token = body["impression_id"]
            tampered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
            for fake in (tampered, "made-up-" + str(i), token[:-2]):
                f = other.post("/v1/feedback", json={"impression_id": fake, "type": "click",
                                                     "doc_id": doc["doc_id"], "position": 1})
                assert f.status_code in (404, 422), f.text
                forged_accepted += f.status_code == 202
            wrong_doc = other.post("/v1/feedback", json={"impression_id": token, "type": "click",
                                                         "doc_id": "never-shown", "position": 1})
            forged_accepted += wrong_doc.status_code == 202
    finally:
        for c in clients:
            c.close()
        for r in replicas:
            assert r.stop() == 0
    assert (accepted, legit, forged_accepted) == (60, 60, 0)
    impressions, feedback = _stored(replicas)
    assert len(impressions) == len(set(impressions)) == 60 and len(feedback) == len(set(feedback)) == 60


def test_sigterm_drains_a_replica_under_load_and_every_2xx_is_stored_once(tmp_path, gateway_artifacts):
    replicas = _replicas(tmp_path, gateway_artifacts)
    searches, feedbacks, lock, stop = [], [], threading.Lock(), threading.Event()

    def traffic(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = replicas[rng.randrange(3)]
                try:
                    s = client.post(r.url + "/v1/search", json={"query": rng.choice(QUERIES),
                                                                 "unit_id": f"u{rng.randrange(500)}", "k": 5})
                    if s.status_code != 200:
                        continue
                    body = s.json()
                    with lock:
                        searches.append(body["impression_id"])
                    target = replicas[rng.randrange(3)]
                    f = client.post(target.url + "/v1/feedback", json={
                        "impression_id": body["impression_id"], "type": "click",
                        "doc_id": body["results"][0]["doc_id"], "position": 1})
                    if f.status_code == 202:
                        with lock:
                            feedbacks.append(f.json()["event_id"])
                except httpx.HTTPError:
                    pass  # the drained replica refuses connections once it exits: not a 2xx, not counted

    threads = [threading.Thread(target=traffic, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        victim = replicas[1]
        victim.signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(victim.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.post(victim.url + "/v1/search", json={"query": QUERIES[0], "unit_id": "late"},
                          timeout=10).status_code == 200  # still serving while load balancers catch up
        assert victim.process.wait(30) == 0             # drained, flushed, exited cleanly
        time.sleep(1.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for r in replicas:
            r.stop()
    impressions, feedback = _stored(replicas)
    assert len(searches) > 30 and len(feedbacks) > 30
    # Every acknowledged event is stored exactly once across the three stores (the "late" search included).
    assert sorted(impressions) == sorted(set(impressions)) and set(searches) <= set(impressions)
    assert len(impressions) == len(searches) + 1
    assert sorted(feedback) == sorted(set(feedback)) and set(feedback) == set(feedbacks)
