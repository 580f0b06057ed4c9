"""`abgate report EXPERIMENT [--dsn DSN] [--experiments DIR] [--json] [--html OUT] [--exact]`.

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

from dashboards.designs import render_page as render_report
from dashboards.designs import render_text
from experiments.errors import InputError
from experiments.loader import SUFFIXES, load_file
from gateway.settings import Settings


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
    parser.add_argument("--exact", action="store_true",
                        help="read the raw events instead of the per-unit aggregates (slower; the same numbers, "
                             "latency quantiles exact rather than within 0.4%%)")
    parser.add_argument("--correction", choices=("holm", "bh", "none"), default="holm",
                        help="multiple-testing correction (default holm)")
    parser.set_defaults(func=run_report)


def experiments_dir(explicit: str | None) -> str:
    if explicit:
        return explicit
    return os.environ.get("ABGATE_EXPERIMENTS_DIR") or Settings.experiments_dir


def find_experiment(folder: str, name: str):
    """The experiment named `name` in `folder`; other files may be broken without blocking this report."""
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


def run_report(args: argparse.Namespace) -> int:
    from experiments.report import (
        build_report,  # scipy and chdb: paid only by the command that needs them
    )
    from gateway.eventlog import store

    experiment = find_experiment(experiments_dir(args.experiments), args.experiment)
    print(f"abgate: computing the report of {experiment.name} ...", file=sys.stderr)
    with store.connect(args.dsn) as client:
        report = build_report(client, experiment, dwell_threshold=args.dwell_threshold,
                              correction=args.correction, exact=args.exact, progress=sys.stderr)
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(render_report(report), encoding="utf-8")
        print(f"abgate: wrote {args.html}", file=sys.stderr)
    print(json.dumps(report, indent=2) if args.json else render_text(report))
    return 0
