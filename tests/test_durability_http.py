"""Exactly once through a real `abgate serve` under load: the store held by another process, and kill -9 of the
gateway followed by a restart. Every 2xx the clients saw is stored once (tests/test_durability.py has the
writer-level cases)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from event_samples import stored
from gateway.eventlog import store
from test_durability import HOLD


def _traffic(url: str, stop, results: dict, lock, seed: int) -> None:
    """One simulated client: searches, and clicks on half the results. Records the ids of every 2xx."""
    import random

    import httpx

    rng = random.Random(seed)
    queries = ["Vitamin D deficiency is linked to tuberculosis.", "ALDH1 expression and breast cancer prognosis",
               "0-dimensional biomaterials show inductive properties.", "statins reduce cardiovascular events"]
    with httpx.Client(base_url=url, timeout=10) as client:
        while not stop.is_set():
            try:
                r = client.post("/v1/search", json={"query": rng.choice(queries),
                                                    "unit_id": f"user-{rng.randrange(500)}", "k": 5})
                if r.status_code != 200:
                    with lock:
                        results["errors"].append(r.status_code)
                    continue
                body = r.json()
                with lock:
                    results["impressions"].add(body["impression_id"])
                if body["results"] and rng.random() < 0.5:
                    first = body["results"][0]
                    f = client.post("/v1/feedback", json={"impression_id": body["impression_id"], "type": "click",
                                                          "doc_id": first["doc_id"], "position": 1})
                    with lock:
                        if f.status_code == 202:
                            results["feedback"].add(f.json()["event_id"])
                        else:
                            results["errors"].append(f.status_code)
            except httpx.HTTPError:
                with lock:
                    results["transport_errors"] += 1  # in flight when the gateway died: no 2xx, no promise
                if stop.wait(0.05):
                    return


CLIENTS = 6  # concurrent HTTP clients: at most this many requests are in flight when the gateway dies


def _run_traffic(url: str, seconds: float, results: dict, clients: int = CLIENTS, *, min_impressions: int = 0,
                 until=None) -> None:
    """Traffic for `seconds`, and on until `min_impressions` are acknowledged (bounded: a slow shared machine
    must not turn a durability test into a timing test); `until(results)` may end it early."""
    import threading

    stop, lock = threading.Event(), threading.Lock()
    threads = [threading.Thread(target=_traffic, args=(url, stop, results, lock, seed)) for seed in range(clients)]
    for t in threads:
        t.start()
    start = time.monotonic()
    while time.monotonic() - start < 120:
        if until is not None and until(results):
            break
        if time.monotonic() - start >= seconds and len(results["impressions"]) >= min_impressions:
            break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)


def _new_results() -> dict:
    return {"impressions": set(), "feedback": set(), "errors": [], "transport_errors": 0}


def _metric(url: str, name: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_http_store_held_by_another_process_then_released(tmp_path, gateway_artifacts):
    from conftest import GatewayProcess, write_two_arm_experiment

    experiments = tmp_path / "experiments"
    write_two_arm_experiment(experiments, *gateway_artifacts)
    folder = tmp_path / "store"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert holder.stdout.readline().strip() == "holding"
    gateway = GatewayProcess(tmp_path, experiments, "--max-wait-ms", "5", "--no-access-log")
    results = _new_results()
    try:
        _run_traffic(gateway.url, 4, results, min_impressions=30)  # the store is unavailable: events go to the spool
        assert _metric(gateway.url, "abgate_events_written_total") == 0
        assert len(results["impressions"]) > 20
        holder.stdin.close()                            # the store comes back part-way through the traffic
        holder.wait(30)
        _run_traffic(gateway.url, 6, results)
    finally:
        if holder.poll() is None:
            holder.kill()
        code = gateway.stop()                           # graceful: the writer flushes on shutdown
    assert code == 0, gateway.read_log()[-2000:]
    assert not results["errors"] and results["transport_errors"] == 0
    with store.connect(f"chdb://{folder}") as client:
        for table, key in (("impressions", "impression_id"), ("feedback", "event_id")):
            ids = {r[0] for r in client.query(f"SELECT {key} FROM {table}_unique").result_rows}
            unique, distinct, _ = stored(client, table)
            assert unique == distinct == len(results[table]) and ids == results[table], table


@pytest.mark.slow
def test_http_kill_9_under_load_then_restart(tmp_path, gateway_artifacts):
    from conftest import GatewayProcess, write_two_arm_experiment

    experiments = tmp_path / "experiments"
    write_two_arm_experiment(experiments, *gateway_artifacts)
    gateway = GatewayProcess(tmp_path, experiments, "--max-wait-ms", "5", "--no-access-log")
    results = _new_results()

    # Under load, killed in the middle of it: the in-memory queue, the spool and an insert may all be busy.
    # The kill comes after 30 acknowledged searches (not after a fixed time, which a busy machine may not reach).
    killed_at: list[float] = []

    def kill_after_30(res: dict) -> bool:
        if not killed_at and len(res["impressions"]) >= 30:
            os.kill(gateway.process.pid, signal.SIGKILL)
            killed_at.append(time.monotonic())
        return bool(killed_at) and time.monotonic() - killed_at[0] > 1.0

    _run_traffic(gateway.url, 60, results, until=kill_after_30)
    assert killed_at, "the gateway never acknowledged 30 searches"
    gateway.process.wait(30)
    assert len(results["impressions"]) > 20
    restarted = GatewayProcess(tmp_path, experiments, "--max-wait-ms", "5", "--no-access-log")  # replays
    code = restarted.stop()
    assert code == 0, restarted.read_log()[-2000:]
    with store.connect(f"chdb://{tmp_path / 'store'}") as client:
        for table, key in (("impressions", "impression_id"), ("feedback", "event_id")):
            ids = {r[0] for r in client.query(f"SELECT {key} FROM {table}_unique").result_rows}
            unique, distinct, _ = stored(client, table)
            assert unique == distinct == len(ids), f"{table}: duplicates"
            lost = results[table] - ids
            assert not lost, f"{len(lost)} {table} answered 2xx but not stored"
            # Requests in flight at the kill may be stored without a 2xx reaching the client: at most those.
            assert len(ids - results[table]) <= CLIENTS, "more stored than answered plus in flight"
