"""The one `abgate` command. It only assembles the subcommands each package registers in its `commands.py`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from experiments.errors import AbgateError

# Each module exposes register(subparsers); a subcommand sets `func(args) -> int | None` as its default.
COMMAND_MODULES = (
    "exporters.commands",          # export-model, finetune, build-index, eval-offline
    "gateway.commands",            # serve
    "gateway.db_commands",         # db migrate, events
    "gateway.simulate_commands",   # simulate, demo
    "experiments.commands",        # experiments validate
    "experiments.stats_commands",  # stats
    "experiments.report_commands", # report
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # a package that has no commands yet
                continue
            raise
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
