"""EventWriter: hands impressions and feedback to ClickHouse in batches without slowing a request or losing one.

Longer than 350 lines because the exactly-once protocol (spool append, queue, drain, commit, catch-up replay,
reconnect) is one state machine under one lock; split across files its invariants would be harder to check.

    submit(event) ──► events.encode ──► spool.append (one write() to the page cache: survives kill -9)
                                    └─► bounded in-memory queue ──► drain thread ──► INSERT … FORMAT MsgPack
                                                                                 ──► spool.commit(position)

A spool record is already a MsgPack row of its table (gateway/eventlog/events.py), so an insert is a join of bytes:
the drain thread does no per-event Python work, which keeps the GIL free for the request path.

The spool is the source of truth and the queue only a fast path: the drain thread takes events from memory
while the queue holds exactly what lies after the committed position ("memory mode"), and reads them back
from the spool ("catch-up mode") after a start with a backlog, after an insert failed, or after the queue
overflowed. So a full queue never blocks `submit()` and never drops an event: the event is already on disk
and is counted as *spilled*. An event is *dropped* only when it could not be written to the spool either
(disk full, writer closed); `submit()` then returns False so the caller can answer 503, and `stats()`
counts it. Replays may insert an event twice (a crash between an insert and its commit); the store's
ReplacingMergeTree tables and the `*_unique` views make that invisible to the analysis.

Ownership: the gateway's lifespan builds one EventWriter, calls `start()`, `wait_connected()` (so the store is
opened and migrated before the gateway says it is ready), `submit()` per event and `close()` on shutdown; the
drain thread inserts through the ClickHouse client it gets from `client_factory`. The request path never reads
the store: feedback is checked against signed impression ids (gateway/impression_ids.py).

Sharing two cores with the request path (measured in bench/bench_gateway.py, docs/event-log.md "Cost"):
- the drain thread runs at a lower OS priority (`nice`, per thread on Linux) and opens the store itself, so
  the embedded engine's threads, created by it, inherit that priority: under contention, encoding wins;
- inserts run single-threaded (`INSERT_SETTINGS`): a batch of a few thousand rows gains nothing from parallel
  parsing and would only take a core from the request path;
- catch-up mode (reading the spool back) hands over to memory mode as soon as the backlog is small, under the
  lock `submit()` appends under, so steady traffic never keeps the drain thread re-reading the spool.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from typing import Callable

from gateway.eventlog import events, tables
from gateway.eventlog.spool import Position, Spool

log = logging.getLogger("abgate.writer")

# Settings of every insert: one thread for parsing and writing the part (see the module docstring).
INSERT_SETTINGS = {"max_threads": 1, "max_insert_threads": 1, "input_format_parallel_parsing": 0}


class EventWriter:
    def __init__(self, client_factory: Callable[[], object], spool_dir: str | os.PathLike, *,
                 queue_size: int = 100_000, batch_size: int = 10_000, min_batch: int = 1_000,
                 flush_interval: float = 0.5, retry_initial: float = 0.2, retry_max: float = 5.0,
                 fsync_interval: float | None = 1.0, migrate: bool = True, nice: int | None = 10) -> None:
        """client_factory: returns a connected clickhouse-connect client (e.g. `lambda: store.connect(dsn)`);
        called again after a failure. batch_size: the most rows per insert; an insert waits for min_batch
        rows or flush_interval seconds, whichever comes first. fsync_interval: seconds between fsyncs of the
        spool (None: never; kill -9 needs none, a power cut does). nice: added to the drain thread's OS
        priority (None: unchanged)."""
        self._factory = client_factory
        self._spool = Spool(spool_dir)
        self.queue_size, self.batch_size, self.min_batch = queue_size, batch_size, min_batch
        self.flush_interval, self.retry_initial, self.retry_max = flush_interval, retry_initial, retry_max
        self.fsync_interval, self.migrate, self.nice = fsync_interval, migrate, nice
        self._first_attempt = threading.Event()  # set once the drain thread has tried to connect
        self._replay_until: Position = (0, 0)     # queued records up to here came from the spool (_hand_over)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)      # drain thread waits here for work
        self._committed = threading.Condition(threading.Lock())  # flush() waits here for commits
        self._queue: collections.deque[tuple[bytes, Position]] = collections.deque()  # spool records
        self._oldest = 0.0                # monotonic time the oldest queued event arrived
        self._memory_mode = False         # start in catch-up: the spool may hold a backlog
        self._flush_requested = False
        self._stopping = False
        self._stop = threading.Event()
        self._last_insert = 0.0
        self._accepting = False
        self._thread: threading.Thread | None = None
        self._client = None
        self._counts = collections.Counter()
        self._last_error: str | None = None
        self._store_up = False

    # -- life cycle --------------------------------------------------------------------------------------
    def start(self) -> "EventWriter":
        self._spool.open()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="abgate-event-writer", daemon=True)
        self._thread.start()
        return self

    def wait_connected(self, timeout: float = 30.0) -> bool:
        """Wait for the drain thread's first connection attempt (open + migrate); True when the store is up.
        The gateway calls it before it reports ready, so that opening the store does not compete with the
        first requests; a store that is down does not hold the start up (events wait in the spool)."""
        self._first_attempt.wait(timeout)
        return self._store_up

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, insert what is pending (up to `timeout` s), stop. True when nothing is left behind;
        anything left stays in the spool and is replayed at the next start."""
        with self._lock:
            self._accepting = False
        done = self.flush(timeout)
        with self._lock:
            self._stopping = True
            self._stop.set()
            self._wake.notify_all()
        if self._thread:
            self._thread.join(timeout=max(1.0, timeout))
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None
        self._spool.sync()
        self._spool.close()
        return done

    def __enter__(self) -> "EventWriter":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- request path ------------------------------------------------------------------------------------
    def submit(self, event: events.Event) -> bool:
        """Accept an event; never blocks on the store. True: it is on disk and will be stored exactly once.
        False: it could not be kept (counted as dropped); the caller should not answer 2xx."""
        try:
            payload = events.encode(event)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise TypeError(f"submit() takes an Impression or a Feedback, got {type(event).__name__}: "
                            f"{exc}") from exc
        with self._lock:
            if not self._accepting:
                self._counts["dropped"] += 1
                return False
            try:
                position = self._spool.append(payload)
            except (OSError, ValueError) as exc:
                self._counts["dropped"] += 1
                self._last_error = f"spool write failed: {exc}"
                log.error("event dropped: %s", self._last_error)
                return False
            self._counts["submitted"] += 1
            if self._memory_mode and len(self._queue) < self.queue_size:
                if not self._queue:
                    self._oldest = time.monotonic()
                self._queue.append((payload, position))
                if len(self._queue) >= self.min_batch:
                    self._wake.notify()
            else:
                # Queue full (or catching up): the event waits in the spool and is read back from there.
                self._memory_mode = False
                self._counts["spilled"] += 1
                self._wake.notify()
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event submitted so far is stored. False if `timeout` passed first."""
        target = self._spool.end
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._flush_requested = True
            self._wake.notify()
        with self._committed:
            while self._spool.committed < target:
                if not (self._thread and self._thread.is_alive()):
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._committed.wait(0.05 if left is None else min(left, 0.05))
        return True

    def pending(self, mark: Position) -> bool:
        """Whether some event submitted before `mark` is not stored yet."""
        return self._spool.committed < mark

    def stats(self) -> dict:
        with self._lock:
            counts = dict(self._counts)
            depth = len(self._queue)
        return {
            "submitted": counts.get("submitted", 0),   # accepted by submit() since start
            "written": counts.get("written", 0),       # rows inserted (replays included)
            "replayed": counts.get("replayed", 0),     # rows inserted from the spool rather than memory
            "spilled": counts.get("spilled", 0),       # accepted while the queue was full or catching up
            "dropped": counts.get("dropped", 0),       # could not be kept: submit() returned False
            "batches": counts.get("batches", 0),
            "insert_errors": counts.get("insert_errors", 0),
            "writer_errors": counts.get("writer_errors", 0),
            "queue_depth": depth,
            "backlog_bytes": self._spool.backlog_bytes(),
            "torn_records": self._spool.torn,
            "corrupt_records": self._spool.corrupt + counts.get("undecodable", 0),
            "store_up": self._store_up,
            "last_error": self._last_error,
        }

    # -- drain thread ------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.retry_initial
        last_sync = time.monotonic()
        self._lower_priority()  # first: the embedded engine's threads, started by _connect, inherit it
        try:
            self._connect()  # connect and migrate now, not at the first event: readiness shows in stats()
        except Exception as exc:
            self._store_failed(exc)
        finally:
            self._first_attempt.set()
        while True:
            try:
                batch, from_memory = self._next_batch()
                if batch is None:
                    return
                ok = self._insert(batch, from_memory) if batch else True
            except Exception as exc:  # e.g. the spool's disk failing: never let the thread die silently
                log.exception("event writer error; retrying")
                with self._lock:
                    self._counts["writer_errors"] += 1
                    self._memory_mode = False
                self._last_error = f"writer error: {exc}"
                ok = False
            if ok:
                delay = self.retry_initial
            else:
                self._stop.wait(delay)  # back off; only stopping cuts it short
                delay = min(delay * 2, self.retry_max)
            if self.fsync_interval is not None and time.monotonic() - last_sync >= self.fsync_interval:
                self._spool.sync()
                last_sync = time.monotonic()

    def _next_batch(self) -> tuple[list | None, bool]:
        """The next spool records to insert as (record, position) pairs; None to stop; [] for nothing yet."""
        with self._lock:
            while True:
                if self._stopping:
                    return None, False
                if not self._memory_mode:
                    break
                waited = time.monotonic() - self._oldest
                if self._queue and (len(self._queue) >= self.min_batch or waited >= self.flush_interval
                                    or self._flush_requested):
                    if len(self._queue) <= self.batch_size:  # take it all: O(1) under the lock
                        batch, self._queue = self._queue, collections.deque()
                    else:
                        batch = [self._queue.popleft() for _ in range(self.batch_size)]
                    self._oldest = time.monotonic()
                    if not self._queue:
                        self._flush_requested = False
                    return batch, True
                if not self._queue:
                    self._flush_requested = False
                timeout = self.flush_interval - waited if self._queue else self.flush_interval
                self._wake.wait(max(timeout, 0.01))
                if self._stopping:
                    return None, False
            self._queue.clear()  # catching up: everything queued is also in the spool, after `committed`
        end = self._spool.end
        records = self._spool.read(self._spool.committed, end=end, max_records=self.batch_size)
        if len(records) < self.min_batch and self._hand_over():
            return [], False  # the queue holds the small rest of the backlog; memory mode inserts it
        if not records:
            return [], False
        if (len(records) < self.min_batch and not self._flush_requested and not self._stopping
                and time.monotonic() - self._last_insert < self.flush_interval):
            self._stop.wait(0.05)  # a trickle while catching up: gather a bigger batch, as memory mode does
            return [], False
        return records, False

    def _hand_over(self) -> bool:
        """Catching up and the backlog is small: move it into the queue and switch to memory mode.

        Under the lock `submit()` appends under, so no event can land between the read and the switch: the
        queue then holds exactly what lies after the committed position, memory mode's invariant. Without
        this, steady traffic appends between every read and its check and keeps the drain thread re-reading
        the spool. False (keep catching up) when more than `min_batch` records wait."""
        with self._lock:
            end = self._spool.end
            records = self._spool.read(self._spool.committed, end=end, max_records=self.min_batch)
            if len(records) >= self.min_batch:
                return False
            if records and records[-1][1] != end:
                return False  # an old segment's torn tail before an empty segment: insert, then hand over
            if not records and self._spool.committed < end:
                self._spool.commit(end)  # past the old segments' (possibly torn) tails
            self._queue = collections.deque(records)
            if records:
                self._replay_until = records[-1][1]
            self._memory_mode = True
            self._oldest = time.monotonic()
            if not records:
                self._flush_requested = False
        self._notify_committed()
        return True

    def _insert(self, batch: list[tuple[bytes | None, Position]], from_memory: bool) -> bool:
        """Insert spool records (None: damaged bytes, skipped) as MsgPack rows, one insert per table."""
        by_kind: dict[bytes, list[bytes]] = {}
        for payload, _ in batch:
            if payload is None:
                continue
            if payload[:1] not in events.KINDS:
                with self._lock:  # passed its checksum, yet not ours: skip, count
                    self._counts["undecodable"] += 1
                log.error("skipping a spool record of unknown kind %r", payload[:1])
                continue
            by_kind.setdefault(payload[:1], []).append(payload)
        if not by_kind:  # only damaged records: move past them
            self._spool.commit(batch[-1][1])
            self._notify_committed()
            return True
        try:
            client = self._connect()
            for kind, records in by_kind.items():
                cls = events.KINDS[kind]
                client.raw_insert(events.TABLES[cls], list(events.COLUMNS[cls]), settings=INSERT_SETTINGS,
                                  insert_block=events.msgpack_rows(records), fmt="MsgPack")
        except Exception as exc:  # any store failure: keep the events in the spool and catch up later
            self._store_failed(exc)
            return False
        self._spool.commit(batch[-1][1])
        rows = sum(len(records) for records in by_kind.values())
        self._last_insert = time.monotonic()
        with self._lock:
            self._counts["written"] += rows
            self._counts["batches"] += 1
            if not from_memory:
                self._counts["replayed"] += rows
            elif batch[0][1] <= self._replay_until:  # handed over from the spool: still a replay
                self._counts["replayed"] += sum(1 for payload, position in batch
                                                if payload and payload[:1] in events.KINDS
                                                and position <= self._replay_until)
        self._notify_committed()
        return True

    def _notify_committed(self) -> None:
        with self._committed:
            self._committed.notify_all()

    def _lower_priority(self) -> None:
        if not self.nice or not hasattr(os, "setpriority"):
            return
        try:  # Linux: PRIO_PROCESS with a thread id sets that thread's nice value only
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.nice))
        except OSError as exc:
            log.info("could not lower the event writer's priority: %s", exc)

    def _connect(self):
        if self._client is None:
            client = self._factory()
            if self.migrate:
                try:
                    tables.migrate(client)
                except Exception:
                    _close_quietly(client)
                    raise
            self._client = client
            if not self._store_up:
                log.info("event store connected")
            self._store_up = True
        return self._client

    def _store_failed(self, exc: Exception) -> None:
        message = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        if self._store_up or self._last_error != message:
            log.warning("event store unavailable, events wait in the spool: %s", message)
        self._last_error = message
        self._store_up = False
        if self._client is not None:
            _close_quietly(self._client)
            self._client = None
        with self._lock:
            self._counts["insert_errors"] += 1
            self._memory_mode = False  # read back from the spool once the store is back


def _close_quietly(client) -> None:
    try:
        client.close()
    except Exception:
        pass
