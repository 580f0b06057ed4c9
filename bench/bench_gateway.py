"""Gateway throughput and latency at concurrency 32 vs in-process batched search (goal >= 0.8x), and the cost
of event logging (on vs off, goal >= 0.95x).

One run, same machine, same SciFact queries, same encoder and index, same ONNX thread count:
- reference: the queries encoded in batches of 32 and searched in-process (Encoder.encode + VectorIndex.search),
  measured before and after the gateway runs (their mean is the yardstick; both are reported);
- gateway, events on: `abgate serve` (uvicorn on 127.0.0.1, a two-arm experiment, micro-batching, impressions
  to the embedded ClickHouse through the EventWriter), driven by bench/loadgen.py (a lean keep-alive client,
  about 0.1 ms of CPU per request where httpx took 5) with 32 requests in flight; requests/s and p50/p99
  latency as the client sees them, and the server's CPU per request (from /proc, all threads) beside the
  reference's CPU per query: a figure other jobs on the machine disturb much less than wall time;
- gateway, events off (`--no-events`): the same, to price the event log.

    python bench/bench_gateway.py [--data DIR] [--quick] [--force] [--device cpu|cuda] [--encoder D --index D]

The client runs on the same machine and takes CPU from the server: the ratio is a low bound. Progress on
stderr; the last stdout line is the bench JSON (docs/architecture.md), also written to bench/results/gateway.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
import loadgen  # noqa: E402
from gateway.launcher import GatewayProcess, GatewayStartError  # noqa: E402
import machine  # noqa: E402

CONCURRENCY = 32


def progress(message: str) -> None:
    print(f"bench_gateway: {message}", file=sys.stderr, flush=True)


def find_artifacts(encoder: str | None, index: str | None, data: Path, docs: int) -> tuple[Path, Path]:
    """--encoder/--index; else artifacts/ or the test fixtures' cache; an index is built when only an encoder
    exists (the first `docs` SciFact documents, into bench/results/, reused by later runs)."""
    if encoder and index:
        return Path(encoder).resolve(), Path(index).resolve()
    encoders = [Path(encoder)] if encoder else [REPO / "artifacts/encoders/baseline",
                                                *sorted((REPO / "tests/artifacts").glob("encoder-baseline-*"))]
    indexes = [REPO / "artifacts/indexes/baseline", *sorted((REPO / "tests/artifacts").glob("index-small-[0-9a-f]*"))]
    enc = next((e.resolve() for e in encoders if (e / "abgate-encoder.json").is_file()), None)
    if enc is None:
        raise SystemExit("bench_gateway: no encoder found: pass --encoder, or build one with `abgate export-model` "
                         "into artifacts/encoders/baseline")
    checksum = json.loads((enc / "abgate-encoder.json").read_text())["checksum"]
    for i in indexes:
        manifest = i / "abgate-index.json"
        if manifest.is_file() and json.loads(manifest.read_text()).get("encoder_checksum") == checksum:
            return enc, i.resolve()
    target = HERE / "results" / f".index-{checksum[:12]}-{docs}"
    if not (target / "abgate-index.json").is_file():
        from exporters.build_index import build_index_from_documents
        from exporters.corpus import read_corpus
        from gateway.encoder import Encoder

        progress(f"building a flat index over the first {docs} SciFact documents into {target}")
        documents, _ = read_corpus(data)
        build_index_from_documents(Encoder.load(enc, threads=1, device="cpu"), documents[:docs], target,
                                   progress=False, overwrite=True)
    return enc, target


def read_queries(data: Path, n: int) -> list[str]:
    texts = []
    with open(data / "queries.jsonl") as fh:
        for line in fh:
            texts.append(json.loads(line)["text"])
    return [texts[i % len(texts)] for i in range(n)]


def reference(encoder_dir: Path, index_dir: Path, queries: list[str], threads: int, device: str,
              workers: int) -> tuple[float, float]:
    """(queries per second, CPU ms per query): encode in batches of 32 and search each batch, in this process,
    `workers` batches at a time: the same threads and parallelism the gateway gets."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.encoder import Encoder
    from gateway.search import VectorIndex

    encoder = Encoder.load(encoder_dir, threads=threads, device=device)
    index = VectorIndex.load(index_dir, encoder_checksum=encoder.checksum, gpu=device != "cpu",
                             threads=threads or None)

    def batch(start: int) -> None:
        index.search(encoder.encode(queries[start:start + 32], batch_size=32), 10)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(batch, range(0, 64, 32)))  # warm-up
        started, cpu = time.perf_counter(), time.process_time()
        list(pool.map(batch, range(0, len(queries), 32)))
    return len(queries) / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / len(queries)


def write_experiment(folder: Path, encoder_dir: Path, index_dir: Path, design: str = "ab", extra: str = "") -> None:
    """Two arms on the same artifacts; `design` and `extra` (more top-level YAML) serve bench_designs.py."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.yaml").write_text(f"""name: bench
description: Gateway benchmark, two arms on the same artifacts.
owner: bench
layer: retrieval
unit: user
salt: bench-salt
status: running
start: 2026-01-01T00:00:00Z
allocation: 1.0
control: a
arms:
  - {{name: a, weight: 1, encoder: {encoder_dir}, index: {index_dir}, top_k: 10}}
  - {{name: b, weight: 1, encoder: {encoder_dir}, index: {index_dir}, top_k: 10}}
metrics: {{primary: ctr}}
design: {{type: {design}, mde: 0.02}}
{extra}""")


def start_server(workdir: Path, experiments: Path, events: bool, threads: int, device: str, access_log: bool,
                 max_wait_ms: float | None, workers: int = 1) -> GatewayProcess:
    args = ["--experiments", str(experiments), "--state-file", str(workdir / "state.json"),
            "--dsn", f"chdb://{workdir / 'store'}", "--spool-dir", str(workdir / "spool"),
            "--encoder-threads", str(threads), "--device", device, "--batch-workers", str(workers)]
    args += [] if events else ["--no-events"]
    args += [] if access_log else ["--no-access-log"]
    args += [] if max_wait_ms is None else ["--max-wait-ms", str(max_wait_ms)]
    log_path = workdir / f"server-{'events' if events else 'noevents'}.log"
    try:
        return GatewayProcess(args, env={"OMP_NUM_THREADS": str(max(threads, 1))}, log_path=log_path).start()
    except GatewayStartError as exc:
        raise SystemExit(f"bench_gateway: {exc.message}") from None


def drive(url: str, queries: list[str], pid: int) -> dict:
    """32 requests in flight (bench/loadgen.py, a lean keep-alive client) until every query was sent once."""
    host, port = url.rsplit("//", 1)[1].split(":")
    bodies = [{"query": q, "unit_id": f"user-{i % 5000}", "k": 10} for i, q in enumerate(queries)]
    loadgen.run(host, int(port), "/v1/search", [{"query": q, "unit_id": "warm"} for q in queries[:64]],
                concurrency=CONCURRENCY, requests=64)
    cpu0 = machine.process_cpu_seconds(pid)
    result = loadgen.run(host, int(port), "/v1/search", bodies, concurrency=CONCURRENCY, requests=len(bodies))
    result["server_cpu_ms_per_request"] = (machine.process_cpu_seconds(pid) - cpu0) * 1000 / len(bodies)
    result["failures"] = result.pop("errors")
    return result


def run_gateway(workdir: Path, experiments: Path, queries: list[str], events: bool, args) -> dict:
    server = start_server(workdir, experiments, events, args.threads, args.device, args.access_log,
                          args.max_wait_ms, args.workers)
    url = server.url
    try:
        result = drive(url, queries, server.pid)
        import httpx
        metrics = httpx.get(url + "/metrics").text
        count = next((float(l.split()[-1]) for l in metrics.splitlines()
                      if l.startswith("abgate_microbatch_size_count")), 0.0)
        total = next((float(l.split()[-1]) for l in metrics.splitlines()
                      if l.startswith("abgate_microbatch_size_sum")), 0.0)
        result["mean_batch"] = total / count if count else 0.0
    finally:
        server.stop()
    return result


def merge(runs: list[dict]) -> dict:
    """Two measurements of equal size: throughput as total requests over total time, latencies averaged."""
    seconds = sum(1 / r["rps"] for r in runs)
    return {"rps": len(runs) / seconds, "p50_ms": statistics.mean(r["p50_ms"] for r in runs),
            "p99_ms": max(r["p99_ms"] for r in runs), "failures": sum(r["failures"] for r in runs),
            "mean_batch": statistics.mean(r["mean_batch"] for r in runs),
            "server_cpu_ms_per_request": statistics.mean(r["server_cpu_ms_per_request"] for r in runs),
            "client_cpu_ms_per_request": statistics.mean(r["client_cpu_ms_per_request"] for r in runs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared/data/scifact"))
    p.add_argument("--quick", action="store_true", help="640 requests per measurement instead of 3,200")
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads, same for reference and gateway")
    p.add_argument("--workers", type=int, default=None,
                   help="batches in flight: the gateway's --batch-workers and the reference's threads (default: "
                        "the gateway's default)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--encoder")
    p.add_argument("--index")
    p.add_argument("--docs", type=int, default=1000, help="documents in the index built when none is given")
    p.add_argument("--max-wait-ms", type=float, default=None, help="the gateway's micro-batch wait (default 2)")
    p.add_argument("--access-log", action="store_true", help="keep the gateway's per-request JSON log line")
    p.add_argument("--force", action="store_true", help="time even on a busy machine")
    p.add_argument("--label", default="", help="suffix for the figure names (gpu.sh uses it)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    n = args.requests or (640 if args.quick else 3200)
    if args.workers is None:
        from gateway.settings import Settings
        args.workers = Settings().batch_workers
    encoder_dir, index_dir = find_artifacts(args.encoder, args.index, Path(args.data), args.docs)
    queries = read_queries(Path(args.data), n)
    idle = machine.wait_until_idle(force=args.force)
    before = machine.snapshot()
    progress(f"reference: {n} queries in batches of 32, in-process ({encoder_dir.name}, {index_dir.name})")
    ref1, cpu1 = reference(encoder_dir, index_dir, queries, args.threads, args.device, args.workers)
    with tempfile.TemporaryDirectory(prefix="abgate-bench-") as tmp:
        workdir = Path(tmp)
        write_experiment(workdir / "experiments", encoder_dir, index_dir)
        # Interleaved halves (on, off, off, on): a machine whose load drifts during the run biases neither side.
        halves = {True: [], False: []}
        for events in (True, False, False, True):
            part = queries[: n // 2] if not halves[events] else queries[n // 2:]
            progress(f"gateway, events {'on' if events else 'off'}: {len(part)} requests, {CONCURRENCY} in flight")
            halves[events].append(run_gateway(workdir, workdir / "experiments", part, events, args))
        on, off = merge(halves[True]), merge(halves[False])
    progress("reference again")
    ref2, cpu2 = reference(encoder_dir, index_dir, queries, args.threads, args.device, args.workers)
    after = machine.snapshot()
    ref = (ref1 + ref2) / 2
    ref_cpu = (cpu1 + cpu2) / 2
    sfx = f" ({args.label})" if args.label else ""
    refname = f"in-process encode+search, batches of 32, {args.workers} at a time, {args.device}{sfx}"
    figures = [
        {"name": f"in-process queries/s{sfx}", "value": round(ref, 1), "unit": "q/s", "ratio": None,
         "reference": None, "goal": None},
        {"name": f"gateway requests/s, events on, c=32{sfx}", "value": round(on["rps"], 1), "unit": "req/s",
         "ratio": round(on["rps"] / ref, 3), "reference": refname, "goal": ">= 0.8"},
        {"name": f"gateway p50 latency, events on{sfx}", "value": round(on["p50_ms"], 2), "unit": "ms",
         "ratio": None, "reference": None, "goal": None},
        {"name": f"gateway p99 latency, events on{sfx}", "value": round(on["p99_ms"], 2), "unit": "ms",
         "ratio": None, "reference": None, "goal": None},
        {"name": f"gateway requests/s, events off, c=32{sfx}", "value": round(off["rps"], 1), "unit": "req/s",
         "ratio": round(off["rps"] / ref, 3), "reference": refname, "goal": None},
        {"name": f"events on / events off{sfx}", "value": round(on["rps"] / off["rps"], 3), "unit": "x",
         "ratio": round(on["rps"] / off["rps"], 3), "reference": "gateway with --no-events, same run",
         "goal": ">= 0.95"},
        {"name": f"server CPU per request, events on{sfx}", "value": round(on["server_cpu_ms_per_request"], 2),
         "unit": "ms", "ratio": round(ref_cpu / on["server_cpu_ms_per_request"], 3),
         "reference": f"in-process CPU per query {ref_cpu:.2f} ms (ratio = efficiency, 1 = no serving overhead)",
         "goal": None},
        {"name": f"server CPU per request, events off{sfx}", "value": round(off["server_cpu_ms_per_request"], 2),
         "unit": "ms", "ratio": round(off["server_cpu_ms_per_request"] / on["server_cpu_ms_per_request"], 3),
         "reference": "server CPU per request with events on (ratio = the CPU-time view of events on / off)",
         "goal": None},
        {"name": f"load generator CPU per request{sfx}", "value": round(on["client_cpu_ms_per_request"], 3),
         "unit": "ms", "ratio": None, "reference": None, "goal": None},
        {"name": f"mean micro-batch size, events on{sfx}", "value": round(on["mean_batch"], 1), "unit": "queries",
         "ratio": None, "reference": None, "goal": None},
    ]
    notes = (f"{n} SciFact queries per measurement; reference runs {ref1:.1f} and {ref2:.1f} q/s; "
             f"{args.threads} ONNX thread(s) x {args.workers} batch worker(s); client on the same machine; failures on/off "
             f"{on['failures']}/{off['failures']}; p50/p99 events off {off['p50_ms']:.1f}/{off['p99_ms']:.1f} ms; "
             f"load {before['load1']} -> {after['load1']}, ORT yardstick {before['ort_reference_ms']} -> "
             f"{after['ort_reference_ms']} ms" + ("; BUSY MACHINE: figures are low bounds" if idle["busy"] else ""))
    result = {"bench": "gateway", "figures": figures, "notes": notes, "machine": machine.machine_info(),
              "before": before, "after": after}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / f"gateway{('-' + args.label) if args.label else ''}.json").write_text(json.dumps(result, indent=2))
    for f in figures:
        progress(f"{f['name']}: {f['value']} {f['unit']}" + (f" (ratio {f['ratio']})" if f["ratio"] else ""))
    print(json.dumps({k: result[k] for k in ("bench", "figures", "notes")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
