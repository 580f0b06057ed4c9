"""The store under test: the embedded engine, and a ClickHouse server when one is given (issue 15)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SERVER_ENV = "ABGATE_TEST_CLICKHOUSE_URL"
STORES = [pytest.param("chdb", id="chdb"),
          pytest.param("server", id="server", marks=pytest.mark.skipif(
              not os.environ.get(SERVER_ENV),
              reason=f"no ClickHouse server: set {SERVER_ENV}=http(s)://user:pass@host:8123 to run the store tests "
                     "against one too (none recent enough installs here: Debian's 18.16 is too old for "
                     "clickhouse-connect); docs/deploy.md"))]


def store_dsn(kind: str, folder: Path, database: str) -> str:
    """A DSN of its own database: in the embedded engine under `folder`, or on the test server."""
    if kind == "chdb":
        return f"chdb://{folder}?database={database}"
    return f"{os.environ[SERVER_ENV].rstrip('/')}/?database={database}"


def drop_server_database(kind: str, dsn: str) -> None:
    if kind == "server":
        from gateway.eventlog import store

        with store.connect(dsn) as client:
            client.command(f"DROP DATABASE IF EXISTS `{client.database}`")


def per_test_database(prefix: str, request) -> str:
    """A database name of the running test's own: modules share one engine folder, tests stay apart."""
    return prefix + request.node.name.replace("[", "_").replace("]", "").replace("-", "_")[:40]
