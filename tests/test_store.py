"""Connecting: DSNs, the embedded engine's one-owner rule, unreachable servers, concurrent use of one client."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from gateway.eventlog import events, store, tables
from event_samples import impression

HOLD = """
import sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn="chdb://" + sys.argv[1])
print("holding", flush=True)
sys.stdin.read()   # until the parent closes our stdin
client.close()
"""


def test_parse_dsn():
    assert store.parse_dsn("chdb:///data/store?database=x") == ("chdb", "chdb:///data/store", "x")
    assert store.parse_dsn("chdb:///data/store")[2] is None
    assert store.parse_dsn("http://ch:8123/?database=logs") == ("http", "http://ch:8123", "logs")
    assert store.parse_dsn("https://u:p@ch:8443/abgate")[2] == "abgate"
    with pytest.raises(store.StoreError, match="scheme 'mysql'"):
        store.parse_dsn("mysql://x")
    with pytest.raises(store.StoreError, match="absolute folder"):
        store.parse_dsn("chdb://relative/path")


def test_default_dsn_follows_env_then_cwd(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(store.DSN_ENV, raising=False)
    assert store.default_dsn() == f"chdb://{tmp_path}/.abgate/store"
    monkeypatch.setenv(store.DSN_ENV, "http://ch:8123")
    assert store.default_dsn() == "http://ch:8123"


def test_connect_creates_the_database(tmp_path):
    with store.connect(f"chdb://{tmp_path}/s?database=fresh") as client:
        assert client.database == "fresh"
        assert client.command("SELECT currentDatabase()") == "fresh"


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(store.StoreError, match="cannot reach the ClickHouse server at http://127.0.0.1:1"):
        store.connect("http://127.0.0.1:1/?database=abgate", connect_timeout=1)


def test_folder_held_by_another_process_names_it(tmp_path):
    folder = tmp_path / "held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(store.StoreBusyError, match=f"held by process {holder.pid}"):
            store.connect(f"chdb://{folder}")
    finally:
        holder.stdin.close()
        holder.wait(30)
    with store.connect(f"chdb://{folder}") as client:  # free again once the holder is gone
        assert client.command("SELECT 1") == 1


def test_one_client_shared_by_threads(tmp_path):
    with store.connect(f"chdb://{tmp_path}/s") as client:
        tables.migrate(client)
        errors = []

        def work(t: int) -> None:
            try:
                for j in range(5):
                    client.insert_arrow("impressions", events.to_arrow([impression(t * 100 + j * 10 + i)
                                                                        for i in range(10)]))
                    client.query("SELECT count() FROM impressions_unique")
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert client.command("SELECT count() FROM impressions_unique") == 6 * 5 * 10
