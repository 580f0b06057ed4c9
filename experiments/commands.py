"""The experiments package's subcommands of `abgate`:

    abgate experiments validate DIR [--state FILE] [--json]   every problem with file, line and field
    abgate stats --input sums.json [--json]                    the statistics engine on per-arm sums
"""

from __future__ import annotations

import argparse
import json
import sys

from experiments.errors import InputError
from experiments.loader import ExperimentsInvalid, load_folder
from experiments.state import ExperimentState


def register(subparsers: argparse._SubParsersAction) -> None:
    register_validate(subparsers)
    register_stats(subparsers)


def register_validate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiments", help="experiment definitions (YAML)")
    sub = parser.add_subparsers(dest="experiments_command", metavar="ACTION", required=True)
    validate = sub.add_parser("validate", help="check a folder of experiment YAML files")
    validate.add_argument("folder", help="folder of *.yaml experiment files")
    validate.add_argument("--state", default=None,
                          help="gateway state file (e.g. .abgate/experiments-state.json): also refuse unsafe "
                               "changes to running experiments")
    validate.add_argument("--force", action="store_true", help="allow unsafe changes to running experiments")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    validate.set_defaults(func=run_validate)


def run_validate(args: argparse.Namespace) -> int:
    state = ExperimentState.load(args.state) if args.state else None
    try:
        loaded = load_folder(args.folder, state=state, force=args.force)
    except ExperimentsInvalid as exc:
        if args.json:
            print(json.dumps({"valid": False, "errors": [
                {"file": e.file, "line": e.line, "field": e.field, "error": e.message} for e in exc.errors]},
                indent=2))
        for e in exc.errors:
            print(f"abgate: error: {e.located()}", file=sys.stderr)
        return 2
    names = sorted(loaded.experiments)
    if args.json:
        print(json.dumps({"valid": True, "experiments": [
            {"name": n, "file": loaded.experiments[n].source, "layer": loaded.experiments[n].layer,
             "status": loaded.experiments[n].status, "arms": [a.name for a in loaded.experiments[n].arms]}
            for n in names]}, indent=2))
    else:
        print(f"{len(names)} experiment(s) valid: {', '.join(names) or '(none)'}")
    return 0


def register_stats(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="analyse a JSON of per-arm sufficient statistics (format: docs/statistics.md)",
        description="Run the statistics engine (tests, sequential intervals, SRM, CUPED, corrections) on a JSON "
                    "file of per-arm sums. Use '-' to read standard input.")
    parser.add_argument("--input", required=True, metavar="SUMS_JSON", help="the sums file, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the full analysis as JSON")
    parser.set_defaults(func=run_stats)


def load_sums(path: str):
    # Imported here so `abgate --help` does not pay for scipy.
    from experiments.stats.sums_file import SumsFormatError, parse_sums

    name = "<stdin>" if path == "-" else path
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise InputError(f"cannot read the sums file ({exc.strerror}); pass an existing JSON file.", file=name) from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg} (column {exc.colno}).", file=name, line=exc.lineno) from None
    try:
        return parse_sums(document)
    except SumsFormatError as exc:
        raise InputError(exc.message + " See docs/statistics.md for the format.", file=name, field=exc.path) from None


def run_stats(args: argparse.Namespace) -> int:
    from experiments.stats.analysis import analyze

    doc = load_sums(args.input)
    analysis = analyze(doc.control, doc.metrics, doc.specs, units=doc.units, weights=doc.weights,
                       settings=doc.settings)
    if args.json:
        print(json.dumps(analysis.to_dict(), indent=2))
    else:
        print(render_table(analysis))
    return 0


def _fmt(value: float | None, relative: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.2f}%" if relative else f"{value:+.4g}"


def render_table(analysis) -> str:
    """A terminal table: one row per metric x arm; errors show their reason instead of numbers."""
    lines = []
    srm = analysis.srm
    if srm is None:
        lines.append("SRM: not checked (the input has no units/weights)")
    elif not srm.ok:
        lines.append(f"SRM: not computed: {srm.reason}")
    else:
        split = ", ".join(f"{arm}={n}" for arm, n in srm.observed.items())
        state = "ALERT: sample ratio mismatch, verdict withheld" if srm.alert else "ok"
        lines.append(f"SRM: p={srm.p_value:.4g} ({split}) {state}")
    s = analysis.settings
    level = f"{(1 - s.alpha) * 100:g}%"
    lines.append(f"alpha={s.alpha:g}  sequential={'yes' if s.sequential else 'no'}  correction={s.correction}")
    header = ("metric", "arm", "control", "treatment", "lift", f"{level} interval", "p", "adj. p", "P(beat)", "")
    rows = [header]
    for c in analysis.comparisons:
        r = c.decision
        if not r.ok:
            rows.append((c.metric, c.arm, "-", "-", "-", "-", "-", "-", "-", f"{r.error}: {r.reason}"))
            continue
        prob = c.bayesian.probability_to_beat_control if c.bayesian and c.bayesian.ok else None
        mark = {True: "significant", False: "", None: ""}[c.significant]
        rows.append((c.metric, c.arm, f"{r.control_value:.4g}", f"{r.treatment_value:.4g}",
                     _fmt(r.lift, r.relative), f"[{_fmt(r.ci_low, r.relative)}, {_fmt(r.ci_high, r.relative)}]",
                     f"{r.p_value:.4g}", f"{c.adjusted_p_value:.4g}", "-" if prob is None else f"{prob:.3f}",
                     mark + (f" ({r.method})" if mark else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return "\n".join(lines)
