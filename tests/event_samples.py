"""Realistic impressions and feedback for the event-log tests (test_writer, test_durability, bench_writer)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from gateway.eventlog.events import Feedback, Impression, new_event_id

START = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)


def impression(i: int, *, experiment: str = "exp", arms: tuple[str, ...] = ("baseline", "finetuned"),
               k: int = 10, rng: random.Random | None = None) -> Impression:
    rng = rng or random.Random(i)
    unit = f"user-{i % 997}"
    return Impression(
        impression_id=new_event_id(), ts=START + timedelta(milliseconds=37 * i), experiment=experiment,
        arm=arms[(i % 997) % len(arms)], unit_id=unit, enrolled=True,
        query=f"does vitamin d {i} reduce the risk of fractures in older adults",
        doc_ids=[str(rng.randrange(5_000_000)) for _ in range(k)],
        scores=sorted((rng.random() for _ in range(k)), reverse=True), latency_ms=rng.uniform(2, 20),
        encoder_checksum="a1b2c3d4e5f60718", index_checksum="0f1e2d3c4b5a6978")


def feedback(imp: Impression, position: int = 1, type: str = "click") -> Feedback:
    return Feedback(event_id=new_event_id(), impression_id=imp.impression_id,
                    ts=imp.ts + timedelta(seconds=3), experiment=imp.experiment, arm=imp.arm,
                    unit_id=imp.unit_id, type=type, doc_id=imp.doc_ids[position - 1], position=position,
                    value=1.0 if type == "click" else 12.5)


def stored(client, table: str = "impressions") -> tuple[int, int, int]:
    """(rows in the deduplicated view, distinct ids, raw rows) of one event table."""
    key = "impression_id" if table == "impressions" else "event_id"
    unique, distinct = client.query(f"SELECT count(), uniqExact({key}) FROM {table}_unique").result_rows[0]
    raw = client.command(f"SELECT count() FROM {table}")
    return int(unique), int(distinct), int(raw)
