"""The one `abgate` command. It only assembles the subcommands each package registers (its `commands`)."""

from __future__ import annotations

import argparse
import json
import sys

from experiments import commands as experiments_commands
from experiments.errors import AbgateError
from exporters import commands as exporters_commands
from gateway.commands import db, report, serve, simulate

# The composition root: the one module that knows every package's commands (docs/architecture.md). Each module
# has register(subparsers); a subcommand sets `func(args) -> int | None` as its default. Command modules
# import their heavy dependencies (torch, scipy, chdb) inside the command, so `abgate --help` stays fast.
COMMAND_MODULES = (
    exporters_commands,    # export-model, import-model, build-index, eval-offline, harvest, finetune
    serve,                 # serve
    db,                    # db migrate|backfill, events count|tail
    simulate,              # simulate, simulate-volume, demo, loop
    experiments_commands,  # experiments validate|plan|propose, stats
    report,                # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except AbgateError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.message, "file": exc.file, "line": exc.line, "field": exc.field}))
        print(f"abgate: error: {exc.located()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("abgate: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
