"""`abgate serve`: the gateway under uvicorn. Flags override ABGATE_* environment variables."""

from __future__ import annotations

import argparse
import json
import sys

from gateway.settings import SERVE_FLAGS, Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="run the A/B gateway (HTTP)")
    p.add_argument("--experiments", dest="experiments_dir", help="folder of experiment YAML files")
    p.add_argument("--layer", help="the layer this gateway serves (default retrieval)")
    p.add_argument("--artifacts-dir", help="base for relative encoder/index paths in the YAML")
    p.add_argument("--state-file", help="experiments state file (default .abgate/experiments-state.json)")
    p.add_argument("--default-encoder", help="encoder for units with no running experiment")
    p.add_argument("--default-index", help="index for units with no running experiment")
    p.add_argument("--force", action="store_true", default=None,
                   help="accept unsafe changes (weights, salt, ...) to running experiments")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--encoder-threads", type=int)
    p.add_argument("--batch-workers", type=int)
    p.add_argument("--max-batch", type=int, help="most queries in one ONNX call (default 32)")
    p.add_argument("--max-wait-ms", type=float, help="longest wait for a batch to fill (default 0: greedy)")
    p.add_argument("--query-cache", type=int,
                   help="query embeddings to keep in an LRU cache (repeated queries skip ONNX); default 0 = off")
    p.add_argument("--dsn", help="event store DSN (chdb:///abs/path or http://host:8123/?database=abgate)")
    p.add_argument("--no-events", dest="log_events", action="store_false", default=None,
                   help="do not log impressions and feedback (benchmarks only)")
    p.add_argument("--spool-dir")
    p.add_argument("--events-flush-s", type=float, help="longest wait before events are inserted (default 1 s)")
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--no-access-log", dest="access_log", action="store_false", default=None)
    p.add_argument("--log-level")
    p.add_argument("--check", action="store_true",
                   help="validate settings and experiments, print them, and exit without serving")
    p.add_argument("--json", action="store_true", help="with --check: print the result as JSON")
    p.set_defaults(func=run)


SETTING_FLAGS = tuple(SERVE_FLAGS)


def preflight(settings: Settings):
    """Check experiments and artifact folders before uvicorn starts, so mistakes print as one clean line
    (file, line, field) instead of a startup traceback. The same plan as the runtime's (gateway/runtime.py)."""
    from experiments.loader import load_folder
    from experiments.state import ExperimentState
    from gateway.runtime import check_arm_artifacts, plan_assigner

    state = ExperimentState.load(settings.state_file)
    loaded = load_folder(settings.experiments_dir, state=state, force=settings.force)
    for arm in plan_assigner(settings, loaded, state).serving_arms():
        check_arm_artifacts(settings, arm)
    return loaded


def run(args: argparse.Namespace) -> int:
    from experiments.loader import ExperimentsInvalid

    settings = Settings.from_env(**{name: getattr(args, name) for name in SETTING_FLAGS})
    try:
        loaded = preflight(settings)
    except ExperimentsInvalid as exc:  # every problem, not only the first
        for error in exc.errors:
            print(f"abgate: error: {error.located()}", file=sys.stderr)
        if args.json:
            print(json.dumps({"valid": False, "errors": [
                {"file": e.file, "line": e.line, "field": e.field, "error": e.message} for e in exc.errors]}))
        return 2
    if args.check:
        secret = {"admin_api_key", "viewer_api_key", "impression_keys", "dsn"}
        summary = {"settings": {k: ("(set)" if v and k in secret else v) for k, v in vars(settings).items()},
                   "experiments": sorted(loaded.experiments)}
        print(json.dumps(summary, indent=2) if args.json else
              f"ok: {len(loaded.experiments)} experiment(s) in {settings.experiments_dir}, layer {settings.layer}")
        return 0
    import logging

    import structlog
    from gateway import logging as gateway_logging
    from gateway.app import create_app
    from gateway.server import Lifecycle, serve

    lifecycle = Lifecycle()
    app = create_app(settings, lifecycle)  # configures structlog's JSON lines
    logging.captureWarnings(True)  # Python warnings as log records, so they are JSON lines too
    structlog.get_logger("abgate.serve").info("serving", url=f"http://{settings.host}:{settings.port}", docs="/docs")
    # uvicorn applies a log_config of its own at start; its default has plain-text handlers, whose warnings and
    # "Exception in ASGI application" tracebacks would break the JSON lines on stderr.
    serve(app, settings, lifecycle, gateway_logging.stdlib_config(settings.log_level))
    return 0
