"""Connecting to the event store: the embedded ClickHouse engine (chdb) or a ClickHouse server, one client API.

DSNs:
    chdb:///abs/path[?database=NAME]           embedded engine in this process (default: <cwd>/.abgate/store)
    http(s)://[user:pass@]host:port/?database=NAME   a ClickHouse server or a cluster's load balancer

`connect(dsn)` returns a `LockedClient`: the clickhouse-connect client behind a lock, so the writer thread, the
request handlers and the dashboard queries of the serving process can share it. The embedded engine is
synchronous and one process owns its folder (ClickHouse locks `<folder>/status`); a second process opening the
same folder gets `StoreBusyError`, which says which process holds it. The database (default `abgate`) is
created if missing, so every other module may name tables without a database prefix.

    AbgateError (experiments.errors)
    └── StoreError               the store cannot be reached or used: exit code 1
        └── StoreBusyError       the chdb folder is held by another process
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

from experiments.errors import AbgateError
from gateway.eventlog.tables import DEFAULT_DATABASE

DSN_ENV = "ABGATE_DSN"


class StoreError(AbgateError):
    exit_code = 1


class StoreBusyError(StoreError):
    pass


def default_dsn() -> str:
    """$ABGATE_DSN, else the embedded store under the working directory."""
    return os.environ.get(DSN_ENV) or f"chdb://{Path.cwd() / '.abgate' / 'store'}"


def parse_dsn(dsn: str) -> tuple[str, str, str | None]:
    """(scheme, dsn without the database parameter, database). Raises StoreError for a DSN it cannot use."""
    parsed = urlparse(dsn)
    if parsed.scheme not in ("chdb", "http", "https"):
        raise StoreError(f"the store DSN {dsn!r} has scheme {parsed.scheme!r}; use chdb:///abs/path for the "
                         "embedded store or http(s)://host:port/?database=NAME for a ClickHouse server",
                         field="dsn")
    query = parse_qs(parsed.query)
    database = query.pop("database", [None])[0]
    if parsed.scheme == "chdb":
        if parsed.netloc or not parsed.path.startswith("/"):
            raise StoreError(f"the embedded store DSN {dsn!r} must name an absolute folder: chdb:///abs/path "
                             "(three slashes)", field="dsn")
    elif not database and parsed.path.strip("/"):
        database = parsed.path.strip("/")  # http://host:8123/abgate is accepted too
    params = urlencode(query, doseq=True)
    if parsed.scheme == "chdb":  # urlunparse would drop the empty host: chdb:/path
        rest = f"chdb://{parsed.path}" + (f"?{params}" if params else "")
    else:
        rest = urlunparse(parsed._replace(query=params, path=""))
    return parsed.scheme, rest, database


def chdb_holder(folder: str | os.PathLike) -> str | None:
    """Who holds an embedded store folder: the 'PID: n' line of ClickHouse's status file, or None when free."""
    status = Path(folder) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        text = status.read_text(errors="replace")
        pid = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("PID:")), "?")
        return f"process {pid}" + (" (this process)" if pid == str(os.getpid()) else "")
    finally:
        os.close(fd)


class LockedClient:
    """A clickhouse-connect client whose calls are serialized by one lock (the embedded engine is synchronous).

    Every public method of the wrapped client (query, command, insert, query_df, ...) is available unchanged.
    """

    def __init__(self, client, dsn: str) -> None:
        self._client = client
        self._lock = threading.RLock()
        self.dsn = dsn

    @property
    def database(self) -> str:
        return self._client.database

    @property
    def raw(self):
        """The wrapped client, for callers that hold `lock` themselves."""
        return self._client

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def locked(*args, **kwargs):
            with self._lock:
                return attr(*args, **kwargs)

        locked.__name__ = name
        return locked

    def close(self) -> None:
        with self._lock:
            self._client.close()

    def __enter__(self) -> "LockedClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(dsn: str | None = None, *, database: str | None = None, create_database: bool = True,
            connect_timeout: float = 3.0) -> LockedClient:
    """Open the store named by `dsn` (default: `default_dsn()`) and make `database` its default database."""
    import clickhouse_connect  # imported here: the CLI's other commands should not pay for it
    from clickhouse_connect.driver.exceptions import ClickHouseError

    dsn = dsn or default_dsn()
    scheme, bare, dsn_database = parse_dsn(dsn)
    database = database or dsn_database or DEFAULT_DATABASE
    try:
        if scheme == "chdb":
            folder = urlparse(bare).path
            Path(folder).mkdir(parents=True, exist_ok=True)
            client = clickhouse_connect.get_client(dsn=bare)
        else:
            # No server session: the client is shared across threads, and a session allows one query at a time.
            client = clickhouse_connect.get_client(dsn=bare, autogenerate_session_id=False,
                                                   connect_timeout=connect_timeout, send_receive_timeout=60)
    except (ClickHouseError, OSError) as exc:
        raise _explain(scheme, bare, exc) from exc
    try:
        if create_database:
            client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        client.database = database
    except ClickHouseError as exc:
        client.close()
        raise StoreError(f"cannot use database {database!r} in the store {dsn}: {_first_line(exc)}",
                         field="dsn") from exc
    return LockedClient(client, dsn)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _explain(scheme: str, bare: str, exc: BaseException) -> StoreError:
    if scheme == "chdb":
        folder = urlparse(bare).path
        holder = chdb_holder(folder)
        if holder:
            return StoreBusyError(
                f"the embedded store {folder} is held by {holder}: one process owns an embedded store "
                "(usually a running `abgate serve`). Stop it, or query through its HTTP API, or use a "
                "ClickHouse server DSN (http://...)", field="dsn")
        if "different path" in str(exc) or "already" in str(exc):
            return StoreError(f"this process already has another embedded store open, and chdb allows one "
                              f"folder per process; close it before opening {folder}", field="dsn")
        return StoreError(f"cannot open the embedded store {folder}: {_first_line(exc)}", field="dsn")
    return StoreError(f"cannot reach the ClickHouse server at {bare}: {_first_line(exc)}; check that it runs "
                      "and that host, port and credentials are right", field="dsn")
