"""The on-disk event journal: append-only segment files of checksummed records, and a committed position.

Every event the writer accepts is appended here before `submit()` returns, so an event whose request got a
2xx survives kill -9 of the process (the bytes are in the OS page cache once `write` returns; `fsync` at an
interval bounds what a power cut could take). The writer inserts records into ClickHouse in order and then
`commit()`s the position it reached; whatever lies after the committed position is replayed — at start after
a crash, and whenever the store comes back after a failure. A record inserted just before a crash, whose
commit did not reach the disk, is inserted again: the store's ReplacingMergeTree tables collapse it.

Layout of `<dir>/`:
    LOCK                  flock'd by the one process that owns the spool
    00000001.seg ...      segments; a new one at each open and every `segment_bytes`
    committed             "segment offset crc" of the first record not yet stored, replaced atomically

Record: MAGIC (2 bytes) | length (u32 LE) | crc32 of the payload (u32 LE) | payload.
A record cut short at the end of a segment (kill -9 during a write) is a *torn* record: detected by its
length or checksum, skipped and counted. Bad bytes in the middle of a segment are skipped up to the next
record whose checksum holds, and counted as *corrupt*. Neither stops the replay.
"""

from __future__ import annotations

import fcntl
import os
import struct
import threading
import zlib
from pathlib import Path

from experiments.errors import AbgateError

MAGIC = b"\xab\x5e"
HEADER = struct.Struct("<2sII")
MAX_RECORD = 1024 * 1024  # events are small; a bigger length field is damage
SEGMENT_SUFFIX = ".seg"

Position = tuple[int, int]  # (segment number, byte offset): tuples order like positions in the journal


class SpoolBusyError(AbgateError):
    exit_code = 1


def frame(payload: bytes) -> bytes:
    # The checksum covers the payload only: a damaged length field shows as a payload that fails it.
    return HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


class Spool:
    def __init__(self, directory: str | os.PathLike, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._segment = 0
        self._offset = 0
        self._dirty = False
        self.committed: Position = (0, 0)
        self.torn = 0           # records cut short at a segment's end (a crash mid-write)
        self.corrupt = 0        # stretches of bad bytes skipped inside a segment
        self._reported: set[Position] = set()  # damage is counted once, however often it is re-read

    # -- owning the directory ---------------------------------------------------------------------------
    def open(self) -> "Spool":
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolBusyError(f"the event spool {self.directory} is in use by another process; give each "
                                 "gateway process its own spool folder", field="spool_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd
        segments = self.segments()
        self.committed = self._read_committed() or ((segments[0], 0) if segments else (1, 0))
        # Never append after an old segment's tail: it may end in a torn record. Start a fresh segment.
        self._open_segment((segments[-1] + 1) if segments else 1)
        return self

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = None

    def segments(self) -> list[int]:
        return sorted(int(p.stem) for p in self.directory.glob(f"*{SEGMENT_SUFFIX}") if p.stem.isdigit())

    def _path(self, segment: int) -> Path:
        return self.directory / f"{segment:08d}{SEGMENT_SUFFIX}"

    def _open_segment(self, segment: int) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._segment, self._offset = segment, os.fstat(self._fd).st_size

    # -- writing ------------------------------------------------------------------------------------------
    def append(self, payload: bytes) -> Position:
        """Append one record; return the position just after it. One `write` call per record."""
        if len(payload) > MAX_RECORD:
            raise ValueError(f"a spool record is limited to {MAX_RECORD} bytes, got {len(payload)}")
        data = frame(payload)
        with self._lock:
            if self._fd is None:
                raise ValueError("the spool is closed")
            if self._offset >= self.segment_bytes:
                self._open_segment(self._segment + 1)
            written = os.write(self._fd, data)
            if written != len(data):  # a short write on a full disk: the record is torn, move past it
                self._open_segment(self._segment + 1)
                raise OSError(f"short write to the spool ({written} of {len(data)} bytes)")
            self._offset += written
            self._dirty = True
            return (self._segment, self._offset)

    @property
    def end(self) -> Position:
        with self._lock:
            return (self._segment, self._offset)

    def sync(self) -> None:
        """fsync the active segment (kill -9 needs no fsync; a power cut does)."""
        with self._lock:  # fsync outside the lock: appends (the request path) must not wait for the disk
            if self._fd is None or not self._dirty:
                return
            fd = os.dup(self._fd)
            self._dirty = False
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- reading and committing -------------------------------------------------------------------------
    def read(self, start: Position, *, end: Position | None = None, max_records: int = 10_000,
             max_bytes: int = 16 * 1024 * 1024) -> list[tuple[bytes | None, Position]]:
        """Records from `start` to the current end, in order: (payload, position after it) pairs.

        A payload of None marks damaged bytes that were skipped: committing its position moves past them.
        """
        end = end or self.end
        out: list[tuple[bytes | None, Position]] = []
        size = 0
        for segment in self.segments():
            if segment < start[0] or segment > end[0]:
                continue
            offset = start[1] if segment == start[0] else 0
            limit = end[1] if segment == end[0] else None
            for payload, pos in self._read_segment(segment, offset, limit, max_bytes - size):
                out.append((payload, pos))
                size += len(payload) if payload else 0
                if len(out) >= max_records or size >= max_bytes:
                    return out
        return out

    def _read_segment(self, segment: int, offset: int, limit: int | None, max_bytes: int):
        # Read a bounded chunk, not the rest of a 64 MiB segment per batch: max_bytes plus one largest
        # record, so every record that starts inside the budget is wholly inside the chunk.
        with open(self._path(segment), "rb") as f:
            remaining = os.fstat(f.fileno()).st_size - offset if limit is None else limit - offset
            f.seek(offset)
            want = min(max(remaining, 0), max(max_bytes, 0) + MAX_RECORD + HEADER.size)
            data = f.read(want)
        whole = want >= remaining  # the chunk reaches the segment's end (or the writer's end)
        pos = 0
        while pos < len(data) and pos < max_bytes:
            record = _parse(data, pos)
            if record is None:
                nxt = _resync(data, pos + 1)
                if nxt is None and not whole:
                    nxt = len(data) - HEADER.size  # damage runs past this chunk: skip what we saw
                self._report(segment, offset + pos, torn=nxt is None)
                if nxt is None:
                    yield None, (segment, offset + len(data))
                    return
                pos = nxt
                yield None, (segment, offset + pos)
                continue
            payload, pos = record
            yield payload, (segment, offset + pos)

    def _report(self, segment: int, offset: int, *, torn: bool) -> None:
        if (segment, offset) in self._reported:
            return
        self._reported.add((segment, offset))
        if torn:
            self.torn += 1
        else:
            self.corrupt += 1

    def commit(self, position: Position) -> None:
        """Record that everything before `position` is stored; drop segments wholly before it."""
        segment, offset = position
        body = f"{segment} {offset}"
        tmp = self.directory / "committed.tmp"
        tmp.write_text(f"{body} {zlib.crc32(body.encode())}\n")
        os.replace(tmp, self.directory / "committed")
        self.committed = position
        for old in self.segments():
            if old < segment and old != self._segment:
                self._path(old).unlink(missing_ok=True)

    def _read_committed(self) -> Position | None:
        try:
            segment, offset, crc = (self.directory / "committed").read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        if zlib.crc32(f"{segment} {offset}".encode()) != int(crc):
            return None  # a damaged checkpoint: replay everything; the store drops the duplicates
        return (int(segment), int(offset))

    def backlog_bytes(self) -> int:
        """Bytes after the committed position: events accepted but not yet known to be stored."""
        total = 0
        for segment in self.segments():
            if segment < self.committed[0]:
                continue
            try:
                size = self._path(segment).stat().st_size
            except FileNotFoundError:
                continue
            total += size - (self.committed[1] if segment == self.committed[0] else 0)
        return max(total, 0)


def _parse(data: bytes, pos: int) -> tuple[bytes, int] | None:
    if len(data) - pos < HEADER.size:
        return None
    magic, length, crc = HEADER.unpack_from(data, pos)
    start = pos + HEADER.size
    if magic != MAGIC or length > MAX_RECORD or start + length > len(data):
        return None
    payload = data[start:start + length]
    if zlib.crc32(payload) != crc:
        return None
    return payload, start + length


def _resync(data: bytes, pos: int) -> int | None:
    """The offset of the next record whose checksum holds, or None (the damage runs to the end: torn)."""
    while True:
        pos = data.find(MAGIC, pos)
        if pos < 0:
            return None
        if _parse(data, pos) is not None:
            return pos
        pos += 1
