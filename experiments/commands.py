"""`abgate experiments validate DIR [--state FILE] [--json]`: every problem with file, line and field."""

from __future__ import annotations

import argparse
import json
import sys

from experiments.loader import ExperimentsInvalid, load_folder
from experiments.state import ExperimentState


def register(subparsers: argparse._SubParsersAction) -> None:
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
