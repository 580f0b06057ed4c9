"""`make bench`: run every bench/bench_*.py and write bench/results/summary.md and summary.json.

Each script prints its figures as one JSON object on the last line of stdout (contract: docs/architecture.md,
"Benchmarks"). Scripts run one at a time, each in its own process so one's threads and caches cannot slow the
next. Around each one this records the load average and the single-thread ONNX Runtime yardstick
(bench/machine.py), and before each one it waits for a quiet machine: on a busy one it refuses to time unless
--force, and forced figures are marked busy.

    python bench/run_all.py [--data DIR] [--quick] [--only infinity gateway] [--force] [--wait S] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import machine  # noqa: E402

RESULTS = HERE / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run_all.py", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "scifact"))
    p.add_argument("--quick", action="store_true", help="pass --quick to every script (shorter runs)")
    p.add_argument("--only", nargs="*", default=None, help="names to run (bench_NAME.py), default all")
    p.add_argument("--force", action="store_true", help="time even on a busy machine (figures marked busy)")
    p.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a quiet machine per script")
    p.add_argument("--timeout", type=float, default=1200.0, help="seconds allowed per script")
    p.add_argument("--json", action="store_true", help="print the summary JSON on stdout")
    return p.parse_args(argv)


def last_json_line(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_script(path: Path, args: argparse.Namespace) -> dict:
    name = path.stem.removeprefix("bench_")
    idle = machine.wait_until_idle(args.wait, force=args.force)
    before = machine.snapshot()
    command = ([sys.executable, str(path), "--data", args.data] + (["--quick"] if args.quick else [])
               + (["--force"] if args.force else []))
    print(f"bench: {name}: {' '.join(command[1:])} (load {before['load1']}, "
          f"ORT reference {before['ort_reference_ms']} ms)", file=sys.stderr)
    started = time.perf_counter()
    try:
        # stderr passes through: it is the script's progress.
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=args.timeout,
                              cwd=HERE.parent)
        code, stdout = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        code, stdout = None, exc.stdout or ""
    after = machine.snapshot()
    entry = {"bench": name, "script": str(path.relative_to(HERE.parent)), "exit_code": code,
             "seconds": round(time.perf_counter() - started, 1), "busy": idle["busy"],
             "before": before, "after": after}
    result = last_json_line(stdout if isinstance(stdout, str) else stdout.decode())
    if code == 0 and result is not None:
        entry |= {"status": "ok", "figures": result.get("figures", []), "notes": result.get("notes", "")}
    else:
        why = "timed out" if code is None else ("refused: machine busy" if code == 3 else
                                                 f"exit code {code}" if code else "no JSON summary line")
        entry |= {"status": "failed", "figures": (result or {}).get("figures", []), "notes": why}
    # The yardstick moving by more than a quarter during the script means others competed for the CPU.
    drift = after["ort_reference_ms"] / max(before["ort_reference_ms"], 1e-9)
    entry["reference_drift"] = round(drift, 2)
    entry["suspect"] = entry["busy"] or not 0.8 <= drift <= 1.25
    return entry


def fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def markdown(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"# abgate benchmarks", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, onnxruntime {m['onnxruntime']}, "
             f"{m['platform']}. Date: {m['date']}.", "",
             "Every ratio is against a reference measured in the same run. The ORT reference is a fixed "
             "single-thread ONNX Runtime timing (bench/machine.py) taken before and after each script; "
             "load is the 1-minute load average. Rows of a script marked *suspect* ran on a busy machine or "
             "while the reference moved by more than 25%.", ""]
    for entry in summary["benchmarks"]:
        b, a = entry["before"], entry["after"]
        flag = " — *suspect*" if entry["suspect"] else ""
        lines += [f"## {entry['bench']} ({entry['status']}{flag})", "",
                  f"load {b['load1']} → {a['load1']}, ORT reference {b['ort_reference_ms']} → "
                  f"{a['ort_reference_ms']} ms, {entry['seconds']} s. {entry['notes']}", ""]
        if entry["figures"]:
            lines += ["| figure | value | unit | ratio | against | goal |", "|---|---:|---|---:|---|---|"]
            for f in entry["figures"]:
                lines.append(f"| {f.get('name')} | {fmt(f.get('value'))} | {f.get('unit', '')} | "
                             f"{fmt(f.get('ratio'))} | {f.get('reference') or ''} | {f.get('goal') or ''} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    if not scripts:
        print("bench: no bench/bench_*.py scripts matched", file=sys.stderr)
        return 2
    summary = {"machine": machine.machine_info(), "command": " ".join(sys.argv), "benchmarks": []}
    RESULTS.mkdir(exist_ok=True)
    for path in scripts:
        summary["benchmarks"].append(run_script(path, args))
        # Written after every script, so an interrupted run still leaves what it measured.
        (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2))
        (RESULTS / "summary.md").write_text(markdown(summary))
    print(f"bench: wrote {RESULTS / 'summary.md'} and summary.json", file=sys.stderr)
    if args.json:
        print(json.dumps(summary))
    return 0 if all(e["status"] == "ok" for e in summary["benchmarks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
