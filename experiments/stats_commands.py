"""`abgate stats --input sums.json [--json]`: analyse per-arm sufficient statistics from any warehouse."""

from __future__ import annotations

import argparse
import json
import sys

from experiments.errors import InputError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "stats", help="analyse a JSON of per-arm sufficient statistics (format: docs/statistics.md)",
        description="Run the statistics engine (tests, sequential intervals, SRM, CUPED, corrections) on a JSON "
                    "file of per-arm sums. Use '-' to read standard input.")
    parser.add_argument("--input", required=True, metavar="SUMS_JSON", help="the sums file, or - for stdin")
    parser.add_argument("--json", action="store_true", help="print the full analysis as JSON")
    parser.set_defaults(func=run)


def load(path: str):
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


def run(args: argparse.Namespace) -> int:
    from experiments.stats.analysis import analyze

    doc = load(args.input)
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
