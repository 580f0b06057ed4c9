"""What every benchmark prints beside its figures: the machine, its load, and a yardstick.

This machine is shared (2 cores, several people): a thread pool collapses when another job is busy, so an
absolute req/s means little. Every figure is therefore a ratio measured in the same run, and each script's
figures carry the load average and a short single-thread ONNX Runtime timing (`ort_reference`) taken around
them: if the yardstick moved during a script, its ratios are suspect and the summary says so.

The yardstick is a fixed synthetic graph (6 x [MatMul 384->1536, Relu, MatMul 1536->384] on a 32 x 384 input,
about 0.45 GFLOP), built in memory with onnx, so it does not depend on any exported artifact.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import numpy as np

_SESSION = None


def machine_info() -> dict:
    import onnxruntime

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(terse=True), "onnxruntime": onnxruntime.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def _reference_session():
    global _SESSION
    if _SESSION is None:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        nodes, inits, prev = [], [], "x"
        for i in range(6):
            for j, shape in enumerate(((384, 1536), (1536, 384))):
                name = f"w{i}_{j}"
                inits.append(numpy_helper.from_array(
                    (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name))
                out = f"h{i}_{j}"
                nodes.append(helper.make_node("MatMul", [prev, name], [out]))
                prev = out
                if j == 0:
                    nodes.append(helper.make_node("Relu", [out], [out + "r"]))
                    prev = out + "r"
        graph = helper.make_graph(nodes, "yardstick",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 384])],
                                  [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [32, 384])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        _SESSION = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _SESSION


def ort_reference(runs: int = 25) -> float:
    """Median milliseconds of one single-thread run of the yardstick graph (about 0.3 s in all)."""
    session = _reference_session()
    x = np.random.default_rng(1).standard_normal((32, 384)).astype(np.float32)
    session.run(None, {"x": x})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {"x": x})
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def process_cpu_seconds(pid: int, children: bool = False) -> float:
    """User+system CPU of a process so far, all its threads (and its direct children if asked), from /proc;
    0.0 where /proc is missing. A server's CPU per request moves much less with other load than its wall time."""
    pids = [pid]
    if children:
        try:
            pids += [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
        except OSError:
            pass
    total = 0.0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def snapshot() -> dict:
    return {"load1": load_average(), "ort_reference_ms": ort_reference()}


def is_busy(load1: float, cores: int | None = None) -> bool:
    # More runnable work than half the cores means someone else competes for the CPUs we are timing.
    return load1 > max(1, (cores or os.cpu_count() or 1)) * 0.5


def wait_until_idle(max_wait_s: float = 120.0, force: bool = False, poll_s: float = 5.0) -> dict:
    """Wait until the load average says the machine is quiet; refuse (SystemExit 3) or, forced, go on busy.
    Forced, it waits at most 10 s: --force means the caller has chosen to time now."""
    if force:
        max_wait_s = min(max_wait_s, 10.0)
    deadline = time.monotonic() + max_wait_s
    while True:
        load1 = load_average()
        if not is_busy(load1):
            return {"load1": load1, "busy": False}
        if time.monotonic() >= deadline:
            if force:
                print(f"bench: machine busy (load {load1}); timing anyway because of --force, "
                      "figures are marked busy", file=sys.stderr)
                return {"load1": load1, "busy": True}
            print(f"bench: refusing to time: load average {load1} on {os.cpu_count()} cores after waiting "
                  f"{max_wait_s:.0f} s; rerun when the machine is quiet, or pass --force to time anyway "
                  "(figures are then marked busy).", file=sys.stderr)
            raise SystemExit(3)
        print(f"bench: waiting for a quiet machine (load {load1})", file=sys.stderr)
        time.sleep(poll_s)
