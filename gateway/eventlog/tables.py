"""The event store's tables, created by versioned, idempotent migrations (`abgate db migrate`).

Design (the reasons are in docs/event-log.md):
- One row per impression, with the shown doc ids and scores as arrays (positions are 1..length). The
  impression is the analysis unit of every metric; arrays keep one search = one row = one atomic insert, and
  `ARRAY JOIN` gives per-result rows when a query needs them.
- Deduplication is by row: `impressions` and `feedback` are ReplacingMergeTree tables whose sorting key ends
  with the event id, so a batch replayed after a crash or a retried insert collapses to one row per id.
  Until a background merge runs, duplicates can still be read: analysis reads `impressions_unique` and
  `feedback_unique` (views with FINAL) or aggregates with `GROUP BY` the id — never the raw tables.
- ORDER BY (experiment, arm, unit_id, id): the analysis aggregates per experiment, then arm, then unit.
- Monthly partitions (`toYYYYMM(ts)`), LowCardinality experiment/arm/checksums/type, and a TTL on the event
  tables (`ttl_days`, 0 = keep forever).
- With `cluster=NAME`: ReplicatedReplacingMergeTree `*_local` tables plus Distributed tables under the plain
  names, sharded by `cityHash64(unit_id)` so that every event of a unit — and every copy of a replayed event —
  lands on one shard, where FINAL can collapse it. Queries stay the same on one node and on a cluster.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

DEFAULT_DATABASE = "abgate"
DEFAULT_TTL_DAYS = 400  # a bit over a year: year-over-year comparisons still have last year's data

IMPRESSIONS_COLUMNS = """
    impression_id String,
    ts DateTime64(3, 'UTC'),
    experiment LowCardinality(String),
    arm LowCardinality(String),
    unit_id String,
    enrolled Bool,
    query String,
    doc_ids Array(String),
    scores Array(Float64),
    latency_ms Float64,
    encoder_checksum LowCardinality(String),
    index_checksum LowCardinality(String),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)"""

FEEDBACK_COLUMNS = """
    event_id String,
    impression_id String,
    ts DateTime64(3, 'UTC'),
    experiment LowCardinality(String),
    arm LowCardinality(String),
    unit_id String,
    type LowCardinality(String),
    doc_id String,
    position UInt16,
    value Float64,
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)"""

# Offline evaluation (written by `abgate eval-offline`): one row per (run, metric, k), and per query.
OFFLINE_EVAL_COLUMNS = """
    run_id String,
    ts DateTime64(3, 'UTC'),
    encoder_checksum LowCardinality(String),
    index_checksum LowCardinality(String),
    label LowCardinality(String),
    dataset LowCardinality(String),
    split LowCardinality(String),
    metric LowCardinality(String),
    k UInt16,
    value Float64,
    queries UInt32"""

OFFLINE_EVAL_QUERIES_COLUMNS = """
    run_id String,
    ts DateTime64(3, 'UTC'),
    encoder_checksum LowCardinality(String),
    index_checksum LowCardinality(String),
    dataset LowCardinality(String),
    split LowCardinality(String),
    query_id String,
    metric LowCardinality(String),
    k UInt16,
    value Float64"""

INTERLEAVINGS_COLUMNS = """
    impression_id String,
    ts DateTime64(3, 'UTC'),
    experiment LowCardinality(String),
    unit_id String,
    arms Array(LowCardinality(String)),
    teams Array(UInt8),
    rankings Array(Array(String)),
    seed UInt64"""

SHADOW_RESULTS_COLUMNS = """
    impression_id String,
    ts DateTime64(3, 'UTC'),
    experiment LowCardinality(String),
    arm LowCardinality(String),
    unit_id String,
    doc_ids Array(String),
    scores Array(Float64),
    latency_ms Float64,
    error String"""

# Per-unit aggregates (experiments/aggregates.py): one row per (experiment, spec, arm, unit), recomputed whole
# from the deduplicated events whenever the unit has new events, so a replayed batch cannot count twice. Per
# active day d_NAME[i] is the day's sum of a per-impression column (UNIT_COLUMNS of experiments/metrics_sql.py);
# `spec` names the definitions they were computed under (window, dwell threshold, custom metrics).
UNIT_AGGREGATES_COLUMNS = """
    experiment LowCardinality(String),
    spec LowCardinality(String),
    arm LowCardinality(String),
    unit_id String,
    days Array(Date),
    d_searches Array(Float64),
    d_clicks Array(Float64),
    d_clicked Array(Float64),
    d_rr Array(Float64),
    d_dwell_ok Array(Float64),
    d_conversions Array(Float64),
    d_zero_results Array(Float64),
    custom Map(String, Array(Float64)),
    latency AggregateFunction(quantilesBFloat16(LATENCY_LEVELS), Float64),
    encoders Array(LowCardinality(String)),
    indexes Array(LowCardinality(String)),
    last_ts DateTime64(3, 'UTC'),
    version UInt64"""

# What each experiment's aggregates cover: built under `spec` through `buckets_done` of `buckets` unit buckets
# (a backfill resumes there), and current up to events inserted at `watermark`.
AGGREGATE_STATE_COLUMNS = """
    experiment LowCardinality(String),
    spec String,
    watermark DateTime64(3, 'UTC'),
    buckets UInt32,
    buckets_done UInt32,
    updated_at DateTime64(3, 'UTC') DEFAULT now64(3)"""

# Partitions by experiment (hashed: a bounded number), so that a finished build can merge its experiment's
# rows into one part (OPTIMIZE ... PARTITION ... FINAL) and FINAL then reads it without merging
AGGREGATE_PARTITION = "cityHash64(experiment) % 64"

# The p80..p99.5 grid of experiments.metrics.LATENCY_GRID (kept literal: tables.py sits below experiments/)
LATENCY_LEVELS = ", ".join(repr(round(0.80 + 0.005 * i, 3)) for i in range(40))

MIGRATIONS_COLUMNS = """
    version UInt32,
    name String,
    applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"""


@dataclass(frozen=True)
class Table:
    name: str
    columns: str
    order_by: str
    partition_by: str | None = "toYYYYMM(ts)"
    ttl: bool = False          # apply the event TTL
    shard_key: str = "rand()"  # for the Distributed table in cluster mode
    version: str = ""          # ReplacingMergeTree's version column: the row with the highest one wins


TABLES = {
    "impressions": Table("impressions", IMPRESSIONS_COLUMNS, "(experiment, arm, unit_id, impression_id)",
                         ttl=True, shard_key="cityHash64(unit_id)"),
    "feedback": Table("feedback", FEEDBACK_COLUMNS, "(experiment, arm, unit_id, impression_id, event_id)",
                      ttl=True, shard_key="cityHash64(unit_id)"),
    "offline_eval": Table("offline_eval", OFFLINE_EVAL_COLUMNS,
                          "(encoder_checksum, index_checksum, dataset, split, metric, k, run_id)",
                          shard_key="cityHash64(run_id)"),
    "offline_eval_queries": Table("offline_eval_queries", OFFLINE_EVAL_QUERIES_COLUMNS,
                                  "(run_id, metric, k, query_id)", shard_key="cityHash64(run_id)"),
    # Interleaved impressions: who contributed each shown position, and every arm's own ranking (replayable)
    "interleavings": Table("interleavings", INTERLEAVINGS_COLUMNS, "(experiment, unit_id, impression_id)",
                           ttl=True, shard_key="cityHash64(unit_id)"),
    # Shadow experiments: the candidate's results for a served (control) impression, never shown to anyone
    "shadow_results": Table("shadow_results", SHADOW_RESULTS_COLUMNS, "(experiment, arm, impression_id)",
                            ttl=True, shard_key="cityHash64(unit_id)"),
    "unit_aggregates": Table("unit_aggregates", UNIT_AGGREGATES_COLUMNS.replace("LATENCY_LEVELS", LATENCY_LEVELS),
                             "(experiment, spec, arm, unit_id)", partition_by=AGGREGATE_PARTITION,
                             shard_key="cityHash64(unit_id)", version="version"),
    "aggregate_state": Table("aggregate_state", AGGREGATE_STATE_COLUMNS, "(experiment, spec)", partition_by=None,
                             shard_key="cityHash64(experiment)", version="updated_at"),
}


def _ttl_clause(ttl_days: int) -> str:
    return f"toDateTime(ts) + toIntervalDay({int(ttl_days)})"


def create_table(db: str, table: Table, *, cluster: str | None, ttl_days: int) -> list[str]:
    """DDL for one table: a ReplacingMergeTree here, or Replicated local + Distributed on a cluster."""
    ttl = f"\nTTL {_ttl_clause(ttl_days)}" if table.ttl and ttl_days > 0 else ""
    partition = f"\nPARTITION BY {table.partition_by}" if table.partition_by else ""
    tail = f"{partition}\nORDER BY {table.order_by}{ttl}"
    if cluster is None:
        return [f"CREATE TABLE IF NOT EXISTS {db}.{table.name} ({table.columns}\n)\n"
                f"ENGINE = ReplacingMergeTree{f'({table.version})' if table.version else ''}{tail}"]
    local = f"{table.name}_local"
    on = f" ON CLUSTER {cluster}"
    version = f", {table.version}" if table.version else ""
    return [
        f"CREATE TABLE IF NOT EXISTS {db}.{local}{on} ({table.columns}\n)\n"
        f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'{version})"
        f"{tail}",
        f"CREATE TABLE IF NOT EXISTS {db}.{table.name}{on} AS {db}.{local}\n"
        f"ENGINE = Distributed({cluster}, {db}, {local}, {table.shard_key})",
    ]


def _views(db: str, cluster: str | None) -> list[str]:
    on = f" ON CLUSTER {cluster}" if cluster else ""
    return [f"CREATE VIEW IF NOT EXISTS {db}.{name}_unique{on} AS SELECT * FROM {db}.{name} FINAL"
            for name in ("impressions", "feedback")]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: Callable[[str, str | None, int], list[str]]  # (database, cluster, ttl_days) -> DDL


MIGRATIONS = (
    Migration(1, "event tables: impressions and feedback", lambda db, cl, ttl: [
        *create_table(db, TABLES["impressions"], cluster=cl, ttl_days=ttl),
        *create_table(db, TABLES["feedback"], cluster=cl, ttl_days=ttl)]),
    Migration(2, "offline evaluation results", lambda db, cl, ttl: [
        *create_table(db, TABLES["offline_eval"], cluster=cl, ttl_days=ttl),
        *create_table(db, TABLES["offline_eval_queries"], cluster=cl, ttl_days=ttl)]),
    Migration(3, "deduplicated views for analysis", lambda db, cl, ttl: _views(db, cl)),
    Migration(4, "interleaving and shadow experiments", lambda db, cl, ttl: [
        *create_table(db, TABLES["interleavings"], cluster=cl, ttl_days=ttl),
        *create_table(db, TABLES["shadow_results"], cluster=cl, ttl_days=ttl)]),
    Migration(5, "per-unit aggregates for reports", lambda db, cl, ttl: [
        *create_table(db, TABLES["unit_aggregates"], cluster=cl, ttl_days=ttl),
        *create_table(db, TABLES["aggregate_state"], cluster=cl, ttl_days=ttl),
        *_inserted_at_index(db, cl)]),
)


def _inserted_at_index(db: str, cluster: str | None) -> list[str]:
    """A min-max skip index on inserted_at: an incremental refresh reads only the granules written since its
    watermark (rows arrive roughly in insertion order). Parts written before the migration stay unindexed and
    are read whole until merged; `ALTER TABLE ... MATERIALIZE INDEX inserted_at_minmax` indexes them at once."""
    on = f" ON CLUSTER {cluster}" if cluster else ""
    return [f"ALTER TABLE {db}.{name}{'_local' if cluster else ''}{on} ADD INDEX IF NOT EXISTS inserted_at_minmax "
            f"inserted_at TYPE minmax GRANULARITY 1" for name in ("impressions", "feedback")]


def bootstrap_statements(db: str, cluster: str | None) -> list[str]:
    on = f" ON CLUSTER {cluster}" if cluster else ""
    if cluster is None:
        engine = "ReplacingMergeTree"
    else:  # one replication group for all nodes: every node knows which versions ran
        engine = f"ReplicatedReplacingMergeTree('/clickhouse/tables/{db}/schema_migrations', '{{replica}}')"
    return [f"CREATE DATABASE IF NOT EXISTS {db}{on}",
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations{on} ({MIGRATIONS_COLUMNS}\n)\n"
            f"ENGINE = {engine}\nORDER BY version"]


def all_statements(db: str = DEFAULT_DATABASE, cluster: str | None = None,
                   ttl_days: int = DEFAULT_TTL_DAYS) -> list[str]:
    """Every DDL statement in order: what deploy/clickhouse-cluster.sql holds for a cluster."""
    statements = bootstrap_statements(db, cluster)
    for migration in MIGRATIONS:
        statements += migration.statements(db, cluster, ttl_days)
    return statements


def applied_versions(client, db: str) -> set[int]:
    exists = client.command(f"EXISTS TABLE {db}.schema_migrations")
    if not int(exists):
        return set()
    return {row[0] for row in client.query(f"SELECT DISTINCT version FROM {db}.schema_migrations").result_rows}


def migrate(client, *, database: str | None = None, cluster: str | None = None,
            ttl_days: int | None = None, progress=None) -> dict:
    """Apply the migrations not yet recorded; safe to run any number of times, also concurrently.

    Each statement is IF NOT EXISTS and versions are recorded in a ReplacingMergeTree, so a migration
    interrupted half-way is simply run again. `ttl_days` (when given) is applied to the event tables
    even when they already exist, so changing the retention is one command.
    """
    db = database or getattr(client, "database", None) or DEFAULT_DATABASE
    if db == "default":
        db = DEFAULT_DATABASE
    for statement in bootstrap_statements(db, cluster):
        client.command(statement)
    done = applied_versions(client, db)
    applied = []
    create_ttl = DEFAULT_TTL_DAYS if ttl_days is None else ttl_days
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        if progress:
            print(f"abgate: migration {migration.version}: {migration.name}", file=progress)
        for statement in migration.statements(db, cluster, create_ttl):
            client.command(statement)
        client.insert(f"{db}.schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
        applied.append(migration.version)
    if ttl_days is not None:
        set_ttl(client, db, ttl_days, cluster=cluster)
    return {"database": db, "cluster": cluster, "applied": applied,
            "version": max(m.version for m in MIGRATIONS), "ttl_days": create_ttl}


def set_ttl(client, db: str, ttl_days: int, *, cluster: str | None = None) -> None:
    on = f" ON CLUSTER {cluster}" if cluster else ""
    for name, table in TABLES.items():
        if not table.ttl:
            continue
        target = f"{db}.{name}_local" if cluster else f"{db}.{name}"
        change = f"MODIFY TTL {_ttl_clause(ttl_days)}" if ttl_days > 0 else "REMOVE TTL"
        # Existing parts keep their TTL info until merged: not rewriting them now keeps the command instant.
        client.command(f"ALTER TABLE {target}{on} {change}", settings={"materialize_ttl_after_modify": 0})


def cluster_sql(cluster: str, db: str = DEFAULT_DATABASE, ttl_days: int = DEFAULT_TTL_DAYS) -> str:
    head = (f"-- abgate event store, cluster '{cluster}': generated by gateway/eventlog/tables.py\n"
            f"-- (abgate db migrate --cluster {cluster} --sql). Run on any node; ON CLUSTER reaches the rest.\n")
    return head + "".join(f"\n{s};\n" for s in all_statements(db, cluster, ttl_days))


if __name__ == "__main__":  # python -m gateway.eventlog.tables NAME > deploy/clickhouse-cluster.sql
    print(cluster_sql(sys.argv[1] if len(sys.argv) > 1 else "abgate"), end="")
