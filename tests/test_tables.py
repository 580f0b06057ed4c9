"""Migrations on the real embedded ClickHouse engine: idempotent, versioned, deduplicating, cluster-ready."""

from __future__ import annotations

from pathlib import Path

import pytest

from stores import STORES, drop_server_database, store_dsn, per_test_database

from event_samples import feedback, impression, stored
from gateway.eventlog import events, store, tables

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", params=STORES)
def folder(tmp_path_factory, request):
    return request.param, tmp_path_factory.mktemp("schema-store")


@pytest.fixture
def client(folder, request):
    # One engine folder per module (chdb opens one per process); a database per test keeps tests apart.
    kind, path = folder
    db = per_test_database("t_", request)
    dsn = store_dsn(kind, path, db)
    with store.connect(dsn) as client:
        yield client
    drop_server_database(kind, dsn)


def test_migrate_is_idempotent_and_versioned(client):
    first = tables.migrate(client)
    assert first["applied"] == [m.version for m in tables.MIGRATIONS]
    assert tables.migrate(client)["applied"] == []
    versions = client.query(f"SELECT version FROM schema_migrations ORDER BY version").result_rows
    assert [v for (v,) in versions] == [1, 2, 3, 4, 5]
    names = {name for (name,) in client.query("SHOW TABLES").result_rows}
    assert {"impressions", "feedback", "offline_eval", "offline_eval_queries", "schema_migrations",
            "impressions_unique", "feedback_unique", "unit_aggregates", "aggregate_state"} <= names


def test_tables_follow_the_design(client):
    tables.migrate(client)
    rows = client.query("SELECT name, engine, partition_key, sorting_key, create_table_query FROM system.tables "
                        "WHERE database = currentDatabase()").named_results()
    info = {r["name"]: r for r in rows}
    for name in ("impressions", "feedback"):
        assert info[name]["engine"] == "ReplacingMergeTree"
        assert info[name]["partition_key"] == "toYYYYMM(ts)"
        assert info[name]["sorting_key"].startswith("experiment, arm, unit_id, impression_id")
        assert f"toIntervalDay({tables.DEFAULT_TTL_DAYS})" in info[name]["create_table_query"]
    types = dict(client.query("SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                              "AND table = 'impressions'").result_rows)
    assert types["experiment"] == types["arm"] == "LowCardinality(String)"
    assert types["doc_ids"] == "Array(String)"
    assert tuple(types)[:len(events.IMPRESSION_COLUMNS)] == events.IMPRESSION_COLUMNS


def test_ttl_can_be_changed_and_removed(client):
    tables.migrate(client, ttl_days=30)
    assert "toIntervalDay(30)" in client.command("SHOW CREATE TABLE impressions")
    tables.migrate(client, ttl_days=0)
    assert "TTL" not in client.command("SHOW CREATE TABLE feedback")


def test_a_retried_batch_is_not_counted_twice(client):
    tables.migrate(client)
    imps = [impression(i) for i in range(500)]
    fbs = [feedback(imp) for imp in imps[:100]]
    for _ in range(2):  # the same batch twice: an insert whose acknowledgement was lost, then retried
        client.insert_arrow("impressions", events.to_arrow(imps))
        client.insert_arrow("feedback", events.to_arrow(fbs))
    assert stored(client, "impressions") == (500, 500, 1000)
    assert stored(client, "feedback")[:2] == (100, 100)
    # What the analysis sees: clicks per arm are the same as from a log without the retry.
    clicks = dict(client.query("SELECT arm, count() FROM feedback_unique GROUP BY arm").result_rows)
    expected = {}
    for fb in fbs:
        expected[fb.arm] = expected.get(fb.arm, 0) + 1
    assert clicks == expected
    client.command("OPTIMIZE TABLE impressions FINAL")  # a merge removes the copies for good
    assert stored(client, "impressions") == (500, 500, 500)


def test_rows_round_trip_exactly(client):
    tables.migrate(client)
    imp = impression(7)
    client.insert_arrow("impressions", events.to_arrow([imp]))
    row = client.query("SELECT * FROM impressions_unique WHERE impression_id = {id:String}",
                       parameters={"id": imp.impression_id}).named_results()
    row = next(iter(row))
    assert row["doc_ids"] == imp.doc_ids and row["unit_id"] == imp.unit_id
    assert row["scores"] == pytest.approx(imp.scores, rel=1e-6)
    assert row["ts"].replace(tzinfo=imp.ts.tzinfo) == imp.ts.replace(microsecond=imp.ts.microsecond // 1000 * 1000)


def test_cluster_ddl_parses_and_shards_by_unit(client):
    statements = tables.all_statements(cluster="prod")
    for statement in statements:  # the real ClickHouse parser, not a string check
        client.query("SELECT formatQuery({q:String})", parameters={"q": statement})
    text = "\n".join(statements)
    assert "ON CLUSTER prod" in text
    # schema_migrations + 8 tables (events, offline, designs, aggregates)
    assert text.count("ReplicatedReplacingMergeTree") == 9
    assert "Distributed(prod, abgate, unit_aggregates_local, cityHash64(unit_id))" in text
    assert "'{replica}', version)" in text  # the aggregates' newest computation wins
    assert "Distributed(prod, abgate, impressions_local, cityHash64(unit_id))" in text
    assert "Distributed(prod, abgate, feedback_local, cityHash64(unit_id))" in text
    assert "Distributed(prod, abgate, interleavings_local, cityHash64(unit_id))" in text


def test_deploy_file_is_the_generated_ddl():
    assert (ROOT / "deploy" / "clickhouse-cluster.sql").read_text() == tables.cluster_sql("abgate"), \
        "regenerate it: python -m gateway.eventlog.tables abgate > deploy/clickhouse-cluster.sql"
