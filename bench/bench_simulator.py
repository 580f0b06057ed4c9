"""How fast `abgate simulate` drives a gateway, against the client it replaced, as a ratio in one run.

One `abgate serve` (a two-arm A/B experiment on the same encoder and index, events on, query cache on, as the
demo serves), then the same simulated users (same seeds, so the same searches and clicks) replayed twice:
- reference: httpx.AsyncClient, one POST /v1/feedback per event (the simulator before 2026-12-03);
- abgate:    gateway/simulation/replay.py as it is: keep-alive HTTP/1.1 on httptools + uvloop, one
             POST /v1/feedback/batch per search.
Reported per client: searches/s, the client's CPU per search, feedback requests per search; the ratio of
searches/s (goal >= 2x: the demo's traffic budget) and of client CPU per search.

    python bench/bench_simulator.py [--data DIR] [--users N] [--quick] [--encoder D --index D] [--force]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_gateway as bg  # noqa: E402
import httpx  # noqa: E402

from gateway.simulation.replay import SimulationResult, replay, run  # noqa: E402
from gateway.simulation.users import ClickModel, Population, load_judgments, make_users, user_rng  # noqa: E402

CONCURRENCY = 32


async def _reference(url: str, judgments, users, model: ClickModel, seed: int) -> SimulationResult:
    """The previous simulator's loop: httpx, and each feedback event in its own request."""
    result = SimulationResult(users=len(users))
    queue: asyncio.Queue = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30, trust_env=False) as client:
        async def worker() -> None:
            while not queue.empty():
                user = queue.get_nowait()
                rng = user_rng(seed, 1_000_000_000 + user.index)
                for visit in user.visits:
                    for query_id in visit:
                        try:
                            r = await client.post("/v1/search", json={"query": judgments.queries[query_id],
                                                                      "unit_id": user.unit_id, "k": 10})
                        except httpx.HTTPError:  # counted, as the simulator of the time did
                            r = None
                        if r is None or r.status_code != 200:
                            result.failed_searches += 1
                            continue
                        result.searches += 1
                        body = r.json()
                        doc_ids = [h["doc_id"] for h in body["results"]]
                        for event in model.feedback(doc_ids, judgments.qrels[query_id], rng, user.propensity):
                            try:
                                f = await client.post("/v1/feedback", json={"impression_id": body["impression_id"],
                                                                            **event})
                                ok = f.status_code == 202
                            except httpx.HTTPError:
                                ok = False
                            result.feedback += ok
                            result.failed_feedback += not ok
                result.users_done += 1

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    result.seconds = time.perf_counter() - started
    return result


def _measure(name: str, run) -> dict:
    cpu = time.process_time()
    result = run()
    cpu_ms = (time.process_time() - cpu) * 1000
    out = {"searches": result.searches, "seconds": round(result.seconds, 2),
           "searches_per_s": round(result.searches / result.seconds, 1),
           "client_cpu_ms_per_search": round(cpu_ms / max(result.searches, 1), 3),
           "feedback_events": result.feedback, "failed": result.failed_searches + result.failed_feedback}
    bg.progress(f"{name}: {out}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared/data/scifact"))
    p.add_argument("--users", type=int, help="simulated users per client (default 3,000; --quick 800)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--encoder")
    p.add_argument("--index")
    p.add_argument("--force", action="store_true", help="accepted for bench/run_all.py; no effect here")
    args = p.parse_args()
    n = args.users or (800 if args.quick else 3000)
    data = Path(args.data)
    encoder, index = bg.find_artifacts(args.encoder, args.index, data, 2000)
    judgments = load_judgments(data)
    model = ClickModel()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bg.write_experiment(work / "experiments", encoder, index)
        server = bg.GatewayProcess(["--experiments", str(work / "experiments"), "--state-file",
                                    str(work / "state.json"), "--dsn", f"chdb://{work / 'store'}", "--spool-dir",
                                    str(work / "spool"), "--no-access-log", "--query-cache", "10000"],
                                   log_path=work / "server.log").start()
        try:
            # Warm the query cache and the store for both: the first use of each query encodes it once.
            warm = make_users(Population(users=300), judgments.query_ids, seed=99, model=model, prefix="warm")
            run(replay(server.url, judgments, warm, model=model, seed=99, concurrency=CONCURRENCY))
            users = {c: make_users(Population(users=n), judgments.query_ids, seed=7, model=model, prefix=c)
                     for c in ("reference", "abgate")}
            results = {
                "reference": _measure("reference (httpx, one request per event)", lambda: run(
                    _reference(server.url, judgments, users["reference"], model, seed=7))),
                "abgate": _measure("abgate (httptools + uvloop, one batch per search)", lambda: run(
                    replay(server.url, judgments, users["abgate"], model=model, seed=7, concurrency=CONCURRENCY))),
            }
        finally:
            server.stop()
    ref, new = results["reference"], results["abgate"]
    out = {"bench": "simulator", "users": n, "results": results,
           "figures": {"searches_per_s_ratio": round(new["searches_per_s"] / ref["searches_per_s"], 2),
                       "client_cpu_ratio": round(new["client_cpu_ms_per_search"] / ref["client_cpu_ms_per_search"], 3)},
           "notes": "same gateway, same users and clicks; goal: searches/s ratio >= 2"}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "simulator.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
