"""The on-disk journal: order, segments, commits, torn and corrupt records, one owner per folder."""

from __future__ import annotations

import os

import pytest

from gateway.eventlog.spool import HEADER, Spool, SpoolBusyError, frame


def payloads(n: int, size: int = 40) -> list[bytes]:
    return [f"event-{i:06d}-".encode() + os.urandom(size) for i in range(n)]


def read_all(spool: Spool, start=None) -> list[bytes]:
    out, position = [], start or spool.committed
    while True:
        records = spool.read(position, max_records=37)
        if not records:
            return out
        out += [p for p, _ in records if p is not None]
        position = records[-1][1]


def test_records_come_back_in_order_across_segments(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1000).open()
    data = payloads(200)
    positions = [spool.append(p) for p in data]
    assert positions == sorted(positions) and len(set(positions)) == 200
    assert len(spool.segments()) > 5
    assert read_all(spool) == data
    spool.close()


def test_commit_survives_reopen_and_drops_old_segments(tmp_path):
    spool = Spool(tmp_path, segment_bytes=1000).open()
    data = payloads(100)
    positions = [spool.append(p) for p in data]
    spool.commit(positions[59])
    first_kept = positions[59][0]
    assert min(spool.segments()) == first_kept
    spool.close()
    reopened = Spool(tmp_path, segment_bytes=1000).open()
    assert reopened.committed == positions[59]
    assert read_all(reopened) == data[60:]
    more = payloads(5)
    for p in more:
        reopened.append(p)  # goes to a fresh segment after the old ones
    assert read_all(reopened) == data[60:] + more
    reopened.close()


def test_torn_last_record_is_skipped_and_counted_once(tmp_path):
    spool = Spool(tmp_path).open()
    data = payloads(50)
    for p in data:
        spool.append(p)
    spool.close()
    segment = tmp_path / "00000001.seg"
    # kill -9 in the middle of a write: a header and half a payload reach the file.
    with open(segment, "ab") as f:
        f.write(frame(b"x" * 100)[:HEADER.size + 30])
    spool = Spool(tmp_path).open()
    assert read_all(spool) == data
    assert read_all(spool) == data
    assert spool.torn == 1 and spool.corrupt == 0
    spool.close()


def test_corrupt_bytes_inside_a_segment_are_skipped(tmp_path):
    spool = Spool(tmp_path).open()
    data = payloads(30)
    ends = [spool.append(p) for p in data]
    spool.close()
    segment = tmp_path / "00000001.seg"
    raw = bytearray(segment.read_bytes())
    start_of_10th = ends[9][1]
    raw[start_of_10th + HEADER.size + 5] ^= 0xFF   # flip one payload byte of record 11
    segment.write_bytes(bytes(raw))
    spool = Spool(tmp_path).open()
    assert read_all(spool) == data[:10] + data[11:]
    assert spool.corrupt == 1 and spool.torn == 0
    spool.close()


def test_damaged_checkpoint_replays_everything(tmp_path):
    spool = Spool(tmp_path).open()
    data = payloads(10)
    positions = [spool.append(p) for p in data]
    spool.commit(positions[4])
    spool.close()
    (tmp_path / "committed").write_text("1 999 12345\n")  # checksum does not match
    spool = Spool(tmp_path).open()
    assert read_all(spool) == data  # duplicates are the store's job (ReplacingMergeTree), loss is not allowed
    spool.close()


def test_one_owner_per_folder(tmp_path):
    spool = Spool(tmp_path).open()
    with pytest.raises(SpoolBusyError, match="in use by another process"):
        Spool(tmp_path).open()
    spool.close()
    Spool(tmp_path).open().close()  # released on close


def test_oversized_record_is_refused(tmp_path):
    spool = Spool(tmp_path).open()
    with pytest.raises(ValueError, match="limited to"):
        spool.append(b"x" * (2 * 1024 * 1024))
    spool.close()
