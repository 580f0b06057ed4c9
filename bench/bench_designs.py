"""What interleaving and shadow cost the serving path, as ratios in one run (docs/interleaving.md).

Same machine, same SciFact queries, one `abgate serve` per variant (events on), driven by bench/loadgen.py:
- ab:           a two-arm A/B experiment (each request runs one arm's encoder and index) — the reference;
- interleaving: the same arms interleaved (each request runs both), query cache off and on;
- shadow:       users get the control, the candidate runs off the request path on every request (sample 1.0).

Reported per variant: requests/s, p50/p99, the server's CPU per request (all threads, from /proc), and the
shadow jobs done/dropped. The ratios: interleaved CPU per request / A/B's (two encoders per request), and shadow
throughput / A/B's (goal >= 0.95 while a core is spare).

    python bench/bench_designs.py [--data DIR] [--quick] [--queries N] [--encoder D --index D] [--force]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import bench_gateway as bg  # noqa: E402
import httpx  # noqa: E402


def run(work: Path, name: str, design: str, queries: list[str], encoder: Path, index: Path,
        extra_args: list[str] = (), extra_yaml: str = "") -> dict:
    experiments = work / name / "experiments"
    bg.write_experiment(experiments, encoder, index, design, extra_yaml)
    server = bg.GatewayProcess(["--experiments", str(experiments), "--state-file", str(work / name / "state.json"),
                                "--dsn", f"chdb://{work / name / 'store'}", "--spool-dir", str(work / name / "spool"),
                                "--no-access-log", *extra_args], log_path=work / name / "server.log").start()
    try:
        result = bg.drive(server.url, queries, server.pid)
        metrics = httpx.get(server.url + "/metrics").text
        result["shadow"] = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                            if line.startswith("abgate_shadow_jobs_total{")}
    finally:
        server.stop()
    bg.progress(f"{name}: {result['rps']:.1f} req/s, server CPU {result['server_cpu_ms_per_request']:.2f} "
                f"ms/request, p99 {result['p99_ms']:.0f} ms")
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared/data/scifact"))
    p.add_argument("--quick", action="store_true", help="300 requests per variant instead of 1,200")
    p.add_argument("--queries", type=int, help="requests per variant (default 1,200; --quick 300)")
    p.add_argument("--encoder")
    p.add_argument("--index")
    # bench/run_all.py passes --force to every script; this one does not check the load itself (run_all.py
    # waits for a quiet machine before it), so there is nothing to force.
    p.add_argument("--force", action="store_true", help="accepted for bench/run_all.py; no effect here")
    args = p.parse_args()
    args.queries = args.queries or (300 if args.quick else 1200)
    data = Path(args.data)
    encoder, index = bg.find_artifacts(args.encoder, args.index, data, 2000)
    queries = (bg.read_queries(data, args.queries) * 3)[:args.queries]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # Both arms serve the same encoder and index: an interleaved request then runs the same encoder twice
        # (two queries in the micro-batcher), which is what two different encoders would cost.
        results = {
            "ab": run(work, "ab", "ab", queries, encoder, index),
            "interleaving": run(work, "interleaving", "interleaving", queries, encoder, index),
            "interleaving_cache": run(work, "interleaving_cache", "interleaving", queries, encoder, index,
                                      ["--query-cache", "10000"]),
            "shadow": run(work, "shadow", "shadow", queries, encoder, index, extra_yaml="shadow: {sample: 1.0}"),
        }
    ab = results["ab"]
    out = {"bench": "designs", "queries": len(queries), "results": results,
           "interleaved_cpu_ratio": results["interleaving"]["server_cpu_ms_per_request"]
           / ab["server_cpu_ms_per_request"],
           "interleaved_cached_cpu_ratio": results["interleaving_cache"]["server_cpu_ms_per_request"]
           / ab["server_cpu_ms_per_request"],
           "shadow_throughput_ratio": results["shadow"]["rps"] / ab["rps"]}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "designs.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
