"""`abgate db migrate|backfill` and `abgate events count|tail`: set up the event store, build an experiment's
per-unit report aggregates from the events already logged, and look at what was logged.

The embedded store (chdb) belongs to one process: while `abgate serve` runs on it, these commands say so
(StoreBusyError) instead of waiting; point them at a ClickHouse server DSN, or stop the gateway first.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timezone

from gateway.eventlog import tables
from experiments.errors import InputError
from gateway.eventlog.store import StoreError, connect


def register(subparsers: argparse._SubParsersAction) -> None:
    db = subparsers.add_parser("db", help="the ClickHouse event store")
    db_sub = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    migrate = db_sub.add_parser("migrate", help="create or upgrade the tables (idempotent)")
    _dsn(migrate)
    migrate.add_argument("--cluster", default=None, metavar="NAME",
                         help="create ReplicatedReplacingMergeTree tables + Distributed tables on this cluster")
    migrate.add_argument("--ttl-days", type=int, default=None,
                         help=f"keep events this many days (default {tables.DEFAULT_TTL_DAYS}; 0 = forever)")
    migrate.add_argument("--sql", action="store_true", help="print the DDL instead of running it")
    migrate.add_argument("--json", action="store_true", help="print the result as JSON")
    migrate.set_defaults(func=_explained(run_migrate))

    backfill = db_sub.add_parser("backfill", help="build an experiment's per-unit aggregates from the events "
                                 "already logged (resumable, with progress)")
    backfill.add_argument("experiment", help="the experiment's name (its `name:` in the YAML)")
    backfill.add_argument("--experiments", default=None, help="folder of experiment YAML files")
    _dsn(backfill)
    backfill.add_argument("--buckets", type=int, default=None,
                          help="unit buckets a new build goes through one by one (default: one per 8M "
                               "impressions; memory per bucket ~ 1/N of a raw-event report's)")
    backfill.add_argument("--dwell-threshold", type=float, default=30.0,
                          help="the dwell threshold the reports will use (default 30 s, as `abgate report`)")
    backfill.add_argument("--rebuild", action="store_true",
                          help="start over even when aggregates exist (they are replaced unit by unit)")
    backfill.add_argument("--stop-after", type=int, default=None, metavar="N",
                          help="stop after N buckets; the next run resumes there")
    backfill.add_argument("--json", action="store_true", help="print the result as JSON")
    backfill.set_defaults(func=_explained(run_backfill))

    ev = subparsers.add_parser("events", help="inspect the logged impressions and feedback")
    ev_sub = ev.add_subparsers(dest="events_command", metavar="ACTION", required=True)
    count = ev_sub.add_parser("count", help="impressions, units and feedback per experiment and arm")
    tail = ev_sub.add_parser("tail", help="the latest events")
    tail.add_argument("-n", "--limit", type=int, default=10, help="how many events (default 10)")
    tail.add_argument("--feedback", action="store_true", help="show feedback instead of impressions")
    for cmd in (count, tail):
        _dsn(cmd)
        cmd.add_argument("--experiment", default=None, help="only this experiment")
        cmd.add_argument("--arm", default=None, help="only this arm")
        cmd.add_argument("--json", action="store_true", help="print the result as JSON")
    count.set_defaults(func=_explained(run_count))
    tail.set_defaults(func=_explained(run_tail))


def _explained(command):
    """Errors from the store become one `abgate: error:` line (exit 1), not a traceback."""
    def run(args: argparse.Namespace) -> int:
        from clickhouse_connect.driver.exceptions import ClickHouseError

        try:
            return command(args)
        except ClickHouseError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]
            raise StoreError(f"the store refused the command: {first}", field="dsn") from exc
    return run


def _dsn(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dsn", default=None,
                        help="chdb:///abs/path or http(s)://host:port/?database=NAME "
                             "(default: $ABGATE_DSN, else .abgate/store under the working directory)")


def run_migrate(args: argparse.Namespace) -> int:
    if args.ttl_days is not None and args.ttl_days < 0:
        raise InputError("must be 0 (keep forever) or a positive number of days", field="--ttl-days")
    if args.sql:
        ttl = tables.DEFAULT_TTL_DAYS if args.ttl_days is None else args.ttl_days
        statements = tables.all_statements(cluster=args.cluster, ttl_days=ttl)
        if args.json:
            print(json.dumps({"statements": statements}, indent=2))
        else:
            print("".join(f"{s};\n\n" for s in statements), end="")
        return 0
    with connect(args.dsn) as client:
        result = tables.migrate(client, cluster=args.cluster, ttl_days=args.ttl_days,
                                progress=None if args.json else sys.stderr)
        result["dsn"] = client.dsn
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        applied = ", ".join(map(str, result["applied"])) or "none (already up to date)"
        print(f"{result['dsn']}: database {result['database']} at schema version {result['version']}; "
              f"migrations applied now: {applied}")
    return 0


def run_backfill(args: argparse.Namespace) -> int:
    from experiments import aggregates
    from gateway.commands.report import experiments_dir, find_experiment

    if args.buckets is not None and args.buckets < 1:
        raise InputError("must be at least 1", field="--buckets")
    if args.stop_after is not None and args.stop_after < 1:
        raise InputError("must be at least 1", field="--stop-after")
    experiment = find_experiment(experiments_dir(args.experiments), args.experiment)
    design = getattr(experiment.design, "type", None) or "ab"
    if design != "ab":
        raise InputError(f"{experiment.name} is a {design} experiment: its report reads its own tables "
                         "(interleavings, shadow_results), which need no aggregates", field="experiment")
    with connect(args.dsn) as client:
        tables.migrate(client)
        result = aggregates.refresh_experiment(client, experiment, dwell_threshold=args.dwell_threshold,
                                    buckets=args.buckets, rebuild=args.rebuild, max_buckets=args.stop_after,
                                    progress=sys.stderr)
    out = {"experiment": experiment.name} | result.to_dict()
    if args.json:
        print(json.dumps(out, indent=2))
    elif result.complete:
        print(f"{experiment.name}: aggregates current ({result.mode}: {result.units:,} units in "
              f"{result.seconds:.1f} s)")
    else:
        print(f"{experiment.name}: {result.buckets_done} of {result.buckets} buckets built; run the same "
              "command again to go on")
    return 0


def _filters(args) -> tuple[str, dict]:
    where, params = [], {}
    for name in ("experiment", "arm"):
        value = getattr(args, name)
        if value is not None:
            where.append(f"{name} = {{{name}:String}}")
            params[name] = value
    return (" WHERE " + " AND ".join(where)) if where else "", params


def run_count(args: argparse.Namespace) -> int:
    where, params = _filters(args)
    with connect(args.dsn) as client:
        tables.migrate(client)  # a fresh store answers zero rather than "unknown table"
        impressions = client.query(
            "SELECT experiment, arm, count() AS impressions, uniqExact(unit_id) AS units, "
            f"countIf(length(doc_ids) = 0) AS zero_results FROM impressions_unique{where} "
            "GROUP BY experiment, arm ORDER BY experiment, arm", parameters=params).named_results()
        feedback = client.query(
            f"SELECT experiment, arm, type, count() AS events FROM feedback_unique{where} "
            "GROUP BY experiment, arm, type ORDER BY experiment, arm, type", parameters=params).named_results()
        raw = client.query(f"SELECT (SELECT count() FROM impressions{where}), "
                           f"(SELECT count() FROM feedback{where})", parameters=params).result_rows[0]
    rows: dict[tuple[str, str], dict] = {}
    for r in impressions:
        rows[(r["experiment"], r["arm"])] = {"experiment": r["experiment"], "arm": r["arm"],
                                             "impressions": r["impressions"], "units": r["units"],
                                             "zero_results": r["zero_results"], "feedback": {}}
    for r in feedback:
        row = rows.setdefault((r["experiment"], r["arm"]), {"experiment": r["experiment"], "arm": r["arm"],
                                                           "impressions": 0, "units": 0, "zero_results": 0,
                                                           "feedback": {}})
        row["feedback"][r["type"]] = r["events"]
    result = {"arms": list(rows.values()),
              # Rows not yet collapsed by a merge (replays); the counts above are already deduplicated.
              "raw_rows": {"impressions": raw[0], "feedback": raw[1]}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not rows:
        print("no events logged" + (" for that experiment/arm" if params else ""))
        return 0
    print(f"{'experiment':<24} {'arm':<16} {'impressions':>11} {'units':>8} {'clicks':>8} {'dwell':>7} "
          f"{'conv':>6}")
    for row in rows.values():
        fb = row["feedback"]
        print(f"{row['experiment']:<24} {row['arm']:<16} {row['impressions']:>11} {row['units']:>8} "
              f"{fb.get('click', 0):>8} {fb.get('dwell', 0):>7} {fb.get('conversion', 0):>6}")
    return 0


def run_tail(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise InputError("must be at least 1", field="--limit")
    where, params = _filters(args)
    if args.feedback:
        columns = "ts, experiment, arm, unit_id, type, doc_id, position, value, impression_id, event_id"
        table = "feedback_unique"
    else:
        columns = ("ts, experiment, arm, unit_id, query, length(doc_ids) AS results, latency_ms, "
                   "impression_id")
        table = "impressions_unique"
    with connect(args.dsn) as client:
        tables.migrate(client)
        rows = client.query(f"SELECT {columns} FROM {table}{where} ORDER BY ts DESC LIMIT {int(args.limit)}",
                            parameters=params).named_results()
        rows = list(rows)
    for row in rows:  # the engine hands back naive datetimes; the column is UTC
        ts = row["ts"]
        row["ts"] = (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).isoformat()
    if args.json:
        print(json.dumps({"events": rows}, indent=2, default=str))
        return 0
    if not rows:
        print("no events logged" + (" for that experiment/arm" if params else ""))
    for row in reversed(rows):
        print("  ".join(str(v) for v in row.values()))
    return 0
