"""`abgate report EXPERIMENT [--dsn DSN] [--experiments DIR] [--json] [--html OUT]`.

Prints the verdict as a terminal table (default), the full report as JSON (`--json`), and/or writes the
dashboard page as one static HTML file (`--html OUT`: inline CSS and SVG, opens offline). The experiment is
looked up by name among the YAML files of DIR (default: $ABGATE_EXPERIMENTS_DIR, else the gateway's
default folder); only that file has to be valid. The store is $ABGATE_DSN or the embedded one under
.abgate/store, unless --dsn says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from experiments.errors import InputError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="an experiment's verdict: table, JSON or static HTML")
    parser.add_argument("experiment", help="the experiment's name (its `name:` in the YAML)")
    parser.add_argument("--dsn", default=None, help="event store: chdb:///abs/path or http(s)://host:port/"
                                                   "?database=NAME (default $ABGATE_DSN or .abgate/store)")
    parser.add_argument("--experiments", default=None, help="folder of experiment YAML files")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument("--html", default=None, metavar="OUT", help="also write the dashboard page to OUT")
    parser.add_argument("--dwell-threshold", type=float, default=30.0,
                        help="seconds of dwell that count as a success (default 30)")
    parser.add_argument("--correction", choices=("holm", "bh", "none"), default="holm",
                        help="multiple-testing correction (default holm)")
    parser.set_defaults(func=run_report)


def experiments_dir(explicit: str | None) -> str:
    if explicit:
        return explicit
    from gateway.settings import Settings

    return os.environ.get("ABGATE_EXPERIMENTS_DIR") or Settings.experiments_dir


def find_experiment(folder: str, name: str):
    """The experiment named `name` in `folder`; other files may be broken without blocking this report."""
    from experiments.loader import SUFFIXES, load_file

    path = Path(folder)
    if not path.is_dir():
        raise InputError("is not a folder of experiment YAML files: pass --experiments DIR", file=folder,
                         field="--experiments")
    names, broken = [], []
    for file in sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        experiment, errors = load_file(file)
        if experiment is not None:
            if experiment.name == name:
                return experiment
            names.append(experiment.name)
        elif errors:
            broken.append(errors[0])
    for error in broken:  # the experiment may be in a file that does not validate: say so, located
        if name in Path(error.file or "").stem:
            raise error
    known = ", ".join(names) or "none"
    hint = f"; {len(broken)} file(s) did not validate (abgate experiments validate {folder})" if broken else ""
    raise InputError(f"no experiment named {name!r} here (known: {known}){hint}", file=folder, field="experiment")


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), _row(["-" * w for w in widths], widths), *(_row(r, widths) for r in rows)]


def render_text(report: dict) -> str:
    from dashboards.pages import fmt_interval, fmt_lift, fmt_p, fmt_value

    exp, verdict, srm = report["experiment"], report["verdict"], report["srm"]
    lines = [f"{exp['name']}: {exp['description']}",
             f"window {report['window']['start']} -> {report['window']['end']}   units "
             f"{report['traffic']['units']:,}   impressions {report['traffic']['impressions']:,}", "",
             f"VERDICT [{verdict['status'].upper()}] {verdict['headline']}"]
    lines += [f"  - {r}" for r in verdict["reasons"]]
    p = srm.get("p_value")
    lines += ["", f"SRM: {srm['status']}" + (f" (p = {fmt_p(p)}; units {srm['observed']})" if p is not None
                                             else f" ({srm.get('reason')})"), ""]
    seq = report["settings"]["sequential"]
    rows = []
    for c in report["comparisons"]:
        rows.append([c["metric"], c["role"], c["arm"], fmt_value(c["control_value"], c["unit"]),
                     fmt_value(c["treatment_value"], c["unit"]), fmt_lift(c["relative"].get("lift")),
                     fmt_interval(c["relative"]), fmt_interval(c["relative_sequential"]) if seq else "",
                     fmt_p(c["adjusted_p_value"]), c["direction"] if not c["reason"] else c["reason"][:60]])
    if rows:
        lines += _table(["metric", "role", "arm", "control", "treatment", "lift", "95% CI",
                         "always-valid CI" if seq else "", "p adj", "result"], rows)
    if report["guardrails"]:
        lines += ["", "Guardrails:"]
        for g in report["guardrails"]:
            f = fmt_lift if g["scale"] == "relative" else (lambda v: fmt_lift(v, ""))
            lines.append(f"  {g['metric']} ({g['arm']}): {g['status']}, harm {f(g['harm'])} "
                         f"(limit {f(g['limit'])})" + (f" - {g['reason']}" if g.get("reason") else ""))
    off = report["offline"]
    lines += ["", "Offline vs online:"]
    for arm, values in off["arms"].items():
        shown = "  ".join(f"{n} {fmt_value((values or {}).get(n))}" for n in off["metrics"])
        lines.append(f"  {arm}: {shown if values else 'no offline evaluation'}")
    for c in off["comparisons"]:
        deltas = "  ".join(f"{k} {v:+.4f}" for k, v in c["offline_deltas"].items()) or "offline deltas n/a"
        flag = "  DISAGREEMENT" if c["disagreement"] else ""
        lines.append(f"  {c['arm']} vs control: {deltas}; online {fmt_lift(c['online_lift'])} "
                     f"({c['online_direction']}){flag}" + (f" - {c['note']}" if c.get("note") else ""))
    for w in report["warnings"] + [f"unknown metric {n!r}" for n in report["unknown_metrics"]]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def run_report(args: argparse.Namespace) -> int:
    from experiments.report import build_report
    from gateway.eventlog import store

    experiment = find_experiment(experiments_dir(args.experiments), args.experiment)
    print(f"abgate: computing the report of {experiment.name} ...", file=sys.stderr)
    with store.connect(args.dsn) as client:
        report = build_report(client, experiment, dwell_threshold=args.dwell_threshold,
                              correction=args.correction)
    if args.html:
        from dashboards.pages import render_report

        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(render_report(report), encoding="utf-8")
        print(f"abgate: wrote {args.html}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0
