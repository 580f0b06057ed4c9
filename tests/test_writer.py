"""EventWriter on the real embedded engine: batching, idle flush, a full queue, stats, shutdown."""

from __future__ import annotations

import threading
import time

import pytest

from stores import STORES, drop_server_database, store_dsn, per_test_database

from event_samples import feedback, impression, stored
from gateway.eventlog import store
from gateway.eventlog.writer import EventWriter


@pytest.fixture(scope="module", params=STORES)
def folder(tmp_path_factory, request):
    return request.param, tmp_path_factory.mktemp("writer-store")


@pytest.fixture
def dsn(folder, request):
    kind, path = folder
    name = per_test_database("w_", request)
    dsn = store_dsn(kind, path, name)
    yield dsn
    drop_server_database(kind, dsn)


def test_busy_traffic_is_inserted_in_big_batches(dsn, tmp_path):
    writer = EventWriter(lambda: store.connect(dsn), tmp_path / "spool", min_batch=1000, batch_size=5000,
                         flush_interval=5.0).start()
    imps = [impression(i) for i in range(6000)]
    for imp in imps:
        assert writer.submit(imp)
    for imp in imps[:500]:
        assert writer.submit(feedback(imp))
    assert writer.flush(60)
    stats = writer.stats()
    writer.close()
    assert stats["written"] == 6500 and stats["dropped"] == 0
    assert stats["written"] / stats["batches"] >= 1000
    with store.connect(dsn) as client:
        assert stored(client, "impressions")[:2] == (6000, 6000)
        assert stored(client, "feedback")[:2] == (500, 500)


def test_idle_events_are_flushed_within_a_second(dsn, tmp_path):
    with store.connect(dsn) as reader, \
            EventWriter(lambda: store.connect(dsn), tmp_path / "spool", flush_interval=0.5) as writer:
        deadline = time.monotonic() + 30
        while not writer.stats()["store_up"]:  # connected and migrated: the clock measures the flush only
            assert time.monotonic() < deadline
            time.sleep(0.05)
        sent = time.monotonic()
        for i in range(3):
            writer.submit(impression(i))
        while reader.command("SELECT count() FROM impressions_unique") < 3:
            assert time.monotonic() - sent < 1.5, "3 idle events were not stored within 1.5 s"
            time.sleep(0.05)


def test_a_full_queue_spills_to_disk_without_blocking(dsn, tmp_path):
    store_back = threading.Event()

    def slow_store():
        store_back.wait()  # the store is unreachable until the test says otherwise
        return store.connect(dsn)

    writer = EventWriter(slow_store, tmp_path / "spool", queue_size=100).start()
    imps = [impression(i) for i in range(3000)]
    slowest = 0.0
    for imp in imps:
        started = time.perf_counter()
        assert writer.submit(imp)
        slowest = max(slowest, time.perf_counter() - started)
    stats = writer.stats()
    assert stats["spilled"] >= 2900 and stats["dropped"] == 0 and stats["written"] == 0
    assert stats["backlog_bytes"] > 0
    assert slowest < 0.05, f"submit() blocked for {slowest * 1000:.1f} ms"
    store_back.set()
    assert writer.flush(60)
    stats = writer.stats()
    writer.close()
    assert stats["written"] == 3000 and stats["replayed"] == 3000 and stats["backlog_bytes"] == 0
    with store.connect(dsn) as client:
        assert stored(client) == (3000, 3000, 3000)


def test_after_close_events_are_refused_and_counted(dsn, tmp_path):
    writer = EventWriter(lambda: store.connect(dsn), tmp_path / "spool").start()
    assert writer.submit(impression(1))
    assert writer.close(30)
    assert writer.submit(impression(2)) is False
    assert writer.stats()["dropped"] == 1
    with store.connect(dsn) as client:
        assert stored(client)[0] == 1


def test_submit_rejects_what_is_not_an_event(dsn, tmp_path):
    with EventWriter(lambda: store.connect(dsn), tmp_path / "spool") as writer:
        with pytest.raises(TypeError, match="Impression or a Feedback"):
            writer.submit({"impression_id": "x"})


def test_pending_events_survive_a_close_without_store(dsn, tmp_path):
    down = EventWriter(lambda: store.connect("http://127.0.0.1:1"), tmp_path / "spool", retry_max=0.2).start()
    for i in range(50):
        assert down.submit(impression(i))
    assert down.close(timeout=0.5) is False  # could not store: the events stay in the spool
    with EventWriter(lambda: store.connect(dsn), tmp_path / "spool") as up:  # next start replays them
        assert up.flush(30)
        assert up.stats()["replayed"] == 50
    with store.connect(dsn) as client:
        assert stored(client) == (50, 50, 50)


def _abgate(*args: str):
    """`abgate ARGS` in this process (the CLI's real entry point): (exit code, stdout, stderr)."""
    import contextlib
    import io
    from types import SimpleNamespace

    from gateway import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_events_commands_show_what_was_logged(tmp_path):
    import json

    dsn = f"chdb://{tmp_path}/store"
    with EventWriter(lambda: store.connect(dsn), tmp_path / "spool") as writer:
        imps = [impression(i) for i in range(40)]
        for imp in imps:
            writer.submit(imp)
        for imp in imps[:10]:
            writer.submit(feedback(imp))
        assert writer.flush(30)
    done = _abgate("events", "count", "--dsn", dsn, "--json")
    assert done.returncode == 0, done.stderr
    arms = {a["arm"]: a for a in json.loads(done.stdout)["arms"]}
    expected = {arm: sum(1 for i in imps if i.arm == arm) for arm in ("baseline", "finetuned")}
    assert {arm: a["impressions"] for arm, a in arms.items()} == expected
    assert sum(a["feedback"].get("click", 0) for a in arms.values()) == 10
    done = _abgate("events", "tail", "--dsn", dsn, "--arm", "baseline", "-n", "3", "--json")
    rows = json.loads(done.stdout)["events"]
    assert len(rows) == 3 and {r["arm"] for r in rows} == {"baseline"} and rows[0]["ts"].endswith("+00:00")
    done = _abgate("events", "count", "--dsn", dsn)
    assert "impressions" in done.stdout and "baseline" in done.stdout


def test_events_command_on_a_store_held_by_a_gateway_says_so(tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "store"
    hold = ("import sys, clickhouse_connect; c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1]); "
            "print('holding', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        done = _abgate("events", "count", "--dsn", f"chdb://{folder}")
    finally:
        holder.stdin.close()
        holder.wait(30)
    assert done.returncode == 1
    assert f"abgate: error: dsn: the embedded store {folder} is held by process {holder.pid}" in done.stderr
    assert "Traceback" not in done.stderr


def test_db_migrate_command(tmp_path):
    import json

    dsn = f"chdb://{tmp_path}/store"
    first = json.loads(_abgate("db", "migrate", "--dsn", dsn, "--json").stdout)
    again = json.loads(_abgate("db", "migrate", "--dsn", dsn, "--json", "--ttl-days", "30").stdout)
    assert first["applied"] == [1, 2, 3, 4, 5] and again["applied"] == [] and again["ttl_days"] == 30
    sql = _abgate("db", "migrate", "--cluster", "prod", "--sql").stdout
    assert "ENGINE = Distributed(prod, abgate, impressions_local, cityHash64(unit_id))" in sql
    bad = _abgate("db", "migrate", "--dsn", "ftp://x")
    assert bad.returncode == 1 and "abgate: error: dsn:" in bad.stderr and "Traceback" not in bad.stderr
    bad = _abgate("db", "migrate", "--dsn", dsn, "--cluster", "nowhere")  # the engine refuses: one line
    assert bad.returncode == 1 and "cluster 'nowhere' not found" in bad.stderr
    bad = _abgate("db", "migrate", "--dsn", dsn, "--ttl-days", "-1")
    assert bad.returncode == 2 and "--ttl-days" in bad.stderr


def test_traffic_that_starts_while_catching_up_is_handed_to_memory_mode(dsn, tmp_path):
    def slow_store():
        time.sleep(0.5)  # traffic arrives while the writer is still connecting: it starts in catch-up mode
        return store.connect(dsn)

    writer = EventWriter(slow_store, tmp_path / "spool", flush_interval=0.2).start()
    for i in range(300):  # a steady trickle, as a gateway sees: appends land between every spool read
        assert writer.submit(impression(i))
        time.sleep(0.005)
    assert writer.flush(30)
    stats = writer.stats()
    writer.close()
    assert stats["written"] == 300 and stats["dropped"] == 0
    # Only what waited for the connection came back from the spool; the rest went through the queue.
    assert stats["replayed"] < 200 and stats["spilled"] < 200, stats
    with store.connect(dsn) as client:
        assert stored(client) == (300, 300, 300)
