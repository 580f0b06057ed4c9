"""Many dashboard readers at once on a big store: one report build, and what it costs the users' searches.

One run: a store with --impressions impressions of an experiment (bench_report's generator) is the gateway's
event store; the gateway also serves a real encoder and index. Measured: search p99 with no readers (the
reference), then search p99 while N readers GET /dashboard/EXPERIMENT/report.json at once, and how many report
builds the gateway made (single flight + report_ttl_s: the goal is 1).

    python bench/bench_read_surface.py [--quick] [--impressions 10000000] [--units 1000000] [--readers 20]
                                       [--store DIR] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_gateway as bg  # noqa: E402
import bench_report as br  # noqa: E402
import httpx  # noqa: E402
import loadgen  # noqa: E402
import yaml  # noqa: E402

from gateway.eventlog import store, tables  # noqa: E402

KEY = "bench-viewer-key"


def write_experiments(folder: Path, encoder: Path, index: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    exp = br.experiment()
    data = {"name": exp.name, "description": "bench", "owner": "bench", "layer": "retrieval", "unit": "user",
            "salt": "bench", "status": "stopped", "start": "2026-11-01T00:00:00Z", "end": "2026-11-15T00:00:00Z",
            "allocation": 1.0, "control": "baseline",
            "arms": [{"name": a, "weight": 50, "encoder": str(encoder), "index": str(index)}
                     for a in ("baseline", "finetuned")],
            "metrics": {"primary": "ctr", "secondary": ["click_share", "mrr"]},
            "design": {"alpha": 0.05, "mde": 0.02, "sequential": True}}
    (folder / "bench.yaml").write_text(yaml.safe_dump(data))


def searches(url: str, queries: list[str], seconds: float) -> dict:
    host, port = url.rsplit("//", 1)[1].split(":")
    bodies = [{"query": q, "unit_id": f"u{i}", "k": 10} for i, q in enumerate(queries)]
    n = max(8, int(seconds * 40))
    return loadgen.run(host, int(port), "/v1/search", (bodies * (n // len(bodies) + 1))[:n], concurrency=4,
                       requests=n)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="1M impressions, 100k units (as bench_report --quick)")
    p.add_argument("--impressions", type=int, help="impressions to generate (default 10M; --quick 1M)")
    p.add_argument("--units", type=int, help="units to generate (default 1M; --quick 100k)")
    p.add_argument("--readers", type=int, default=20)
    p.add_argument("--store", default=None, help="reuse (or keep) a generated store; its size wins over the flags")
    p.add_argument("--data", default=str(HERE.parent.parent / "shared/data/scifact"))
    # bench/run_all.py passes --force to every script; this one does not check the load itself (run_all.py
    # waits for a quiet machine before it), so there is nothing to force.
    p.add_argument("--force", action="store_true", help="accepted for bench/run_all.py; no effect here")
    args = p.parse_args()
    args.impressions = args.impressions or (1_000_000 if args.quick else 10_000_000)
    args.units = args.units or (100_000 if args.quick else 1_000_000)
    encoder, index = bg.find_artifacts(None, None, Path(args.data), 2000)
    queries = bg.read_queries(Path(args.data), 200)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = Path(args.store) if args.store else work / "store"
        if not (folder / "metadata").exists():
            bg.progress(f"generating {args.impressions:,} impressions")
            with store.connect(f"chdb://{folder}") as client:
                tables.migrate(client)
                br.generate(client, args.impressions, args.units)
        write_experiments(work / "experiments", encoder, index)
        server = bg.GatewayProcess(["--experiments", str(work / "experiments"), "--dsn", f"chdb://{folder}",
                                    "--spool-dir", str(work / "spool"), "--state-file", str(work / "state.json"),
                                    "--no-access-log"], env={"ABGATE_VIEWER_API_KEY": KEY},
                                   log_path=work / "server.log", ready_timeout_s=300).start()
        try:
            alone = searches(server.url, queries, 20)
            bg.progress(f"search alone: p99 {alone['p99_ms']} ms")
            results = {}

            def search_during() -> None:
                results["during"] = searches(server.url, queries, 20)

            t = threading.Thread(target=search_during)
            started = time.perf_counter()
            t.start()
            with ThreadPoolExecutor(args.readers) as pool:
                codes = list(pool.map(lambda _: httpx.get(f"{server.url}/dashboard/{br.EXPERIMENT}/report.json",
                                                          headers={"X-API-Key": KEY}, timeout=600).status_code,
                                      range(args.readers)))
            readers_s = time.perf_counter() - started
            t.join()
        finally:
            server.stop()
        builds = sum(1 for line in (work / "server.log").read_text().splitlines() if "report built" in line)
    out = {"bench": "read_surface", "impressions": args.impressions, "readers": args.readers,
           "statuses": sorted(set(codes)), "readers_seconds": round(readers_s, 1), "report_builds": builds,
           "search_alone": alone, "search_during": results.get("during"),
           "p99_ratio": (results["during"]["p99_ms"] / alone["p99_ms"]) if results.get("during") else None}
    print(json.dumps(out))
    return 0 if out["statuses"] == [200] else 1


if __name__ == "__main__":
    sys.exit(main())
