"""Sustained impression rows/s from the EventWriter into the embedded ClickHouse store (goal >= 50k rows/s).

One run measures, on the same pre-built impressions (10 results each) and a fresh chdb folder:
- reference: the same rows inserted directly with `insert_arrow` in batches of 10,000 (the engine + Arrow
  conversion, no journal, no queue): the ceiling the writer is compared with;
- writer: `submit()` of every row as fast as one thread can, then `flush()`: rows/s from the first submit to
  the last row stored, the ratio to the reference, rows per insert, and submit() latency p50/p99/max;
- replay: the same number of rows submitted while the store is unreachable (all go to the spool), then the
  store comes back: rows/s of the catch-up from disk.

    python bench/bench_writer.py [--quick] [--rows N] [--force]

Progress on stderr; the last stdout line is the bench JSON (docs/architecture.md), also written to
bench/results/writer.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import machine  # noqa: E402

from gateway.eventlog import events, store, tables  # noqa: E402
from gateway.eventlog.events import Impression  # noqa: E402
from gateway.eventlog.writer import EventWriter  # noqa: E402

BATCH = 10_000


def progress(message: str) -> None:
    print(f"bench_writer: {message}", file=sys.stderr, flush=True)


def make_rows(n: int, seed: int = 1) -> list[Impression]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 2, tzinfo=timezone.utc)
    return [Impression(events.new_event_id(), start + timedelta(milliseconds=i), "bench-exp",
                       ("baseline", "finetuned")[i % 2], f"user-{rng.randrange(100_000)}", True,
                       f"query {rng.randrange(1000)} about cells and proteins",
                       [str(rng.randrange(5_000_000)) for _ in range(10)],
                       sorted((rng.random() for _ in range(10)), reverse=True), rng.uniform(2, 20),
                       "a1b2c3d4e5f60718", "0f1e2d3c4b5a6978") for i in range(n)]


def reference(client, rows: list[Impression]) -> float:
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        client.insert_arrow("impressions", events.to_arrow(rows[i:i + BATCH]))
    return len(rows) / (time.perf_counter() - started)


def wait_up(writer: EventWriter) -> None:
    while not writer.stats()["store_up"]:
        time.sleep(0.02)


def bench_experiment():
    from experiments.schema import parse_experiment

    exp, problems = parse_experiment({
        "name": "bench-exp", "description": "bench", "owner": "bench", "layer": "bench", "unit": "user",
        "salt": "bench", "status": "running", "start": "2026-11-01T00:00:00Z", "allocation": 1.0,
        "control": "baseline", "arms": [{"name": a, "weight": 50, "encoder": "e", "index": "i"}
                                        for a in ("baseline", "finetuned")],
        "metrics": {"primary": "ctr"}, "design": {"mde": 0.02}})
    assert not problems, problems
    return exp


def refresher(dsn: str, every_s: float, stop: threading.Event, runs: list) -> threading.Thread:
    """The gateway's aggregate refresh (dashboards/refresher.py), every `every_s` while the writer inserts."""
    from experiments import aggregates

    def loop():
        exp = bench_experiment()
        with store.connect(dsn) as client:
            tables.migrate(client)
            while not stop.wait(every_s):
                runs.append(aggregates.refresh_experiment(client, exp, database=client.database,
                                                          dwell_threshold=30.0).units)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def writer_run(dsn: str, spool: Path, rows: list[Impression], refresh_s: float = 0.0) -> dict:
    writer = EventWriter(lambda: store.connect(dsn), spool, fsync_interval=1.0).start()
    wait_up(writer)
    stop, runs = threading.Event(), []
    thread = refresher(dsn, refresh_s, stop, runs) if refresh_s else None
    latencies = []
    started = time.perf_counter()
    for i, row in enumerate(rows):
        if i % 16 == 0:  # timing every call would slow the loop it measures
            t0 = time.perf_counter()
            writer.submit(row)
            latencies.append(time.perf_counter() - t0)
        else:
            writer.submit(row)
    submitted = time.perf_counter()
    assert writer.flush(600), "the writer did not drain"
    elapsed = time.perf_counter() - started
    if thread is not None:
        stop.set()
        thread.join()
    stats = writer.stats()
    writer.close()
    latencies.sort()
    return {"rows_per_s": len(rows) / elapsed, "submit_rows_per_s": len(rows) / (submitted - started),
            "rows_per_insert": stats["written"] / max(stats["batches"], 1), "spilled": stats["spilled"],
            "dropped": stats["dropped"],
            "submit_p50_us": statistics.median(latencies) * 1e6,
            "submit_p99_us": latencies[int(len(latencies) * 0.99)] * 1e6, "submit_max_us": latencies[-1] * 1e6,
            "refreshes": len(runs), "units_refreshed": sum(runs)}


def replay_run(dsn: str, spool: Path, rows: list[Impression]) -> dict:
    back = threading.Event()

    def factory():
        back.wait()  # the store is unreachable until every row is in the spool
        return store.connect(dsn)

    writer = EventWriter(factory, spool).start()
    for row in rows:
        writer.submit(row)
    started = time.perf_counter()
    back.set()
    assert writer.flush(600), "the replay did not finish"
    elapsed = time.perf_counter() - started
    stats = writer.stats()
    writer.close()
    return {"rows_per_s": len(rows) / elapsed, "replayed": stats["replayed"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="unused (the rows are synthetic); accepted like every bench")
    p.add_argument("--quick", action="store_true", help="50,000 rows instead of 200,000")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--force", action="store_true", help="time even on a busy machine")
    p.add_argument("--refresh-s", type=float, default=1.0,
                   help="aggregate refresh interval during the second writer run (default 1 s: harsher than "
                        "the gateway's 30 s)")
    args = p.parse_args()
    n = args.rows or (50_000 if args.quick else 200_000)
    idle = machine.wait_until_idle(force=args.force)
    before = machine.snapshot()
    progress(f"building {n:,} impressions (10 results each)")
    rows = make_rows(n)
    with tempfile.TemporaryDirectory(prefix="abgate-bench-writer-") as tmp:
        dsn = f"chdb://{tmp}/store"
        with store.connect(dsn + "?database=reference") as client:
            tables.migrate(client)
            progress("reference: direct insert_arrow in batches of 10,000")
            ref = reference(client, rows)
        progress(f"reference {ref:,.0f} rows/s; writer: submit() every row, then flush()")
        w = writer_run(dsn + "?database=writer", Path(tmp) / "spool-writer", rows)
        progress(f"writer {w['rows_per_s']:,.0f} rows/s; the same with the aggregates refreshed every "
                 f"{args.refresh_s:g} s")
        wa = writer_run(dsn + "?database=writer_agg", Path(tmp) / "spool-writer-agg", rows, args.refresh_s)
        progress(f"writer with aggregates {wa['rows_per_s']:,.0f} rows/s ({wa['refreshes']} refreshes, "
                 f"{wa['units_refreshed']:,} unit rows); replay from the spool")
        r = replay_run(dsn + "?database=replay", Path(tmp) / "spool-replay", rows)
        progress(f"replay {r['rows_per_s']:,.0f} rows/s")
        with store.connect(dsn + "?database=writer") as client:
            kept = client.command("SELECT count() FROM impressions_unique")
        assert kept == n, f"the writer stored {kept} of {n} rows"
    after = machine.snapshot()
    ref_name = "direct insert_arrow, batches of 10,000, same rows, same run"
    figures = [
        {"name": "writer impression rows/s (submit -> stored)", "value": round(w["rows_per_s"]),
         "unit": "rows/s", "ratio": round(w["rows_per_s"] / ref, 3), "reference": ref_name,
         "goal": ">= 50,000 rows/s"},
        {"name": "writer rows/s with the aggregates refreshed", "value": round(wa["rows_per_s"]), "unit": "rows/s",
         "ratio": round(wa["rows_per_s"] / w["rows_per_s"], 3),
         "reference": f"the writer without aggregates, same rows, same run (refresh every {args.refresh_s:g} s, "
                      f"{wa['refreshes']} refreshes; the gateway's default is 30 s)", "goal": ">= 0.8"},
        {"name": "direct insert rows/s (reference)", "value": round(ref), "unit": "rows/s", "ratio": None,
         "reference": None, "goal": None},
        {"name": "submit() rows/s (one thread, journal write included)", "value": round(w["submit_rows_per_s"]),
         "unit": "rows/s", "ratio": round(w["submit_rows_per_s"] / ref, 3), "reference": ref_name, "goal": None},
        {"name": "rows per insert", "value": round(w["rows_per_insert"]), "unit": "rows", "ratio": None,
         "reference": None, "goal": ">= 1,000 when busy"},
        {"name": "submit() p50", "value": round(w["submit_p50_us"], 1), "unit": "us", "ratio": None,
         "reference": None, "goal": None},
        {"name": "submit() p99", "value": round(w["submit_p99_us"], 1), "unit": "us", "ratio": None,
         "reference": None, "goal": None},
        {"name": "submit() max", "value": round(w["submit_max_us"], 1), "unit": "us", "ratio": None,
         "reference": None, "goal": None},
        {"name": "replay from spool rows/s", "value": round(r["rows_per_s"]), "unit": "rows/s",
         "ratio": round(r["rows_per_s"] / ref, 3), "reference": ref_name, "goal": None},
    ]
    notes = (f"{n:,} impressions of 10 results; spilled {w['spilled']}, dropped {w['dropped']}; load "
             f"{before['load1']} -> {after['load1']}, ORT reference {before['ort_reference_ms']} -> "
             f"{after['ort_reference_ms']} ms" + ("; BUSY MACHINE: figures are low bounds" if idle["busy"] else ""))
    result = {"bench": "writer", "figures": figures, "notes": notes, "machine": machine.machine_info(),
              "before": before, "after": after}
    out = HERE / "results" / "writer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("bench", "figures", "notes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
