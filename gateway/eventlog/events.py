"""The two events the gateway logs, and how each becomes a ClickHouse row or a spool record.

Who owns what: the gateway builds `Impression` (one per search response) and `Feedback` (one per click, dwell
or conversion) and hands them to `gateway.eventlog.writer.EventWriter.submit`; the writer turns each into bytes with `encode`: a
record of the on-disk spool (`gateway.eventlog.spool`) that is also a MsgPack row of `gateway.eventlog.tables`'s `impressions` /
`feedback` tables. The id fields are the deduplication keys: a replayed event keeps its id,
so the ReplacingMergeTree tables collapse it (see docs/event-log.md).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from operator import attrgetter
from datetime import datetime, timezone

import msgspec


class Impression(msgspec.Struct, frozen=True):
    # ImpressionSigner.sign (gateway/impression_ids.py): it carries and signs what feedback needs, so any replica
    # verifies feedback without a lookup; also the dedup key
    impression_id: str
    ts: datetime            # UTC
    experiment: str
    arm: str
    unit_id: str
    enrolled: bool
    query: str
    doc_ids: list[str]
    scores: list[float]     # positions are 1..len(doc_ids)
    latency_ms: float
    encoder_checksum: str
    index_checksum: str


class Feedback(msgspec.Struct, frozen=True):
    event_id: str           # dedup key; derived from the event for a replay to collapse (feedback_event_id)
    impression_id: str
    ts: datetime
    experiment: str         # copied from the impression by the gateway
    arm: str
    unit_id: str
    type: str               # click | dwell | conversion
    doc_id: str
    position: int
    value: float            # dwell seconds, conversion value; 1.0 for a click


class Interleaving(msgspec.Struct, frozen=True):
    """Beside the Impression of an interleaved search (same id): the team of each shown position and every
    arm's own ranking, so clicks are credited when the report is built and the merge can be replayed."""
    impression_id: str
    ts: datetime
    experiment: str
    unit_id: str
    arms: list[str]          # team index -> arm name, control first
    teams: list[int]         # per shown position (1..len): the index in `arms` of the arm that contributed it
    rankings: list[list[str]]  # each arm's own top-k, in `arms` order
    seed: int                # the coin flips' seed (gateway.interleaving.seed_of(impression_id))


class ShadowResult(msgspec.Struct, frozen=True):
    """A shadow experiment's candidate results for a served impression (same id); no user saw them."""
    impression_id: str
    ts: datetime
    experiment: str
    arm: str
    unit_id: str
    doc_ids: list[str]
    scores: list[float]
    latency_ms: float
    error: str               # "" when the candidate answered


Event = Impression | Feedback | Interleaving | ShadowResult

FEEDBACK_TYPES = ("click", "dwell", "conversion")

# Column order of each table as the writer inserts it (schema.py creates the tables with these names).
IMPRESSION_COLUMNS = ("impression_id", "ts", "experiment", "arm", "unit_id", "enrolled", "query", "doc_ids",
                      "scores", "latency_ms", "encoder_checksum", "index_checksum")
FEEDBACK_COLUMNS = ("event_id", "impression_id", "ts", "experiment", "arm", "unit_id", "type", "doc_id",
                    "position", "value")
INTERLEAVING_COLUMNS = ("impression_id", "ts", "experiment", "unit_id", "arms", "teams", "rankings", "seed")
SHADOW_COLUMNS = ("impression_id", "ts", "experiment", "arm", "unit_id", "doc_ids", "scores", "latency_ms", "error")
TABLES = {Impression: "impressions", Feedback: "feedback", Interleaving: "interleavings",
          ShadowResult: "shadow_results"}
COLUMNS = {Impression: IMPRESSION_COLUMNS, Feedback: FEEDBACK_COLUMNS, Interleaving: INTERLEAVING_COLUMNS,
           ShadowResult: SHADOW_COLUMNS}


def new_event_id() -> str:
    """A random id (128 bits) for an event that must never collapse with another: a conversion sent without an
    idempotency key (gateway/service.py `feedback_id`)."""
    return secrets.token_urlsafe(16)


def feedback_event_id(impression_id: str, type: str, doc_id: str, idempotency_key: str | None = None) -> str:
    """The id of a feedback event that must be stored once however often it is sent: a digest of what names it
    (the impression, the type, the document, and the client's idempotency key when there is one), so a client's
    retry gets the same id and the ReplacingMergeTree collapses it. Same length and alphabet as new_event_id."""
    parts = msgspec.json.encode(["abgate-feedback-v1", impression_id, type, doc_id, idempotency_key])
    return base64.urlsafe_b64encode(hashlib.sha256(parts).digest()[:16]).rstrip(b"=").decode()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _arrow_types() -> dict[type, list]:
    import pyarrow as pa
    text, stamp, floats = pa.string(), pa.timestamp("ms", tz="UTC"), pa.list_(pa.float64())
    return {
        Impression: [text, stamp, text, text, text, pa.bool_(), text, pa.list_(text), floats, pa.float64(),
                     text, text],
        Feedback: [text, text, stamp, text, text, text, text, text, pa.uint16(), pa.float64()],
        Interleaving: [text, stamp, text, text, pa.list_(text), pa.list_(pa.uint8()), pa.list_(pa.list_(text)),
                       pa.uint64()],
        ShadowResult: [text, stamp, text, text, text, pa.list_(text), floats, pa.float64(), text],
    }


_ARROW_TYPES: dict[type, list] = {}
_GETTERS = {cls: [attrgetter(name) for name in names] for cls, names in COLUMNS.items()}


def to_arrow(batch: list[Impression] | list[Feedback]):
    """One Arrow table for one event type, columns named as in the ClickHouse table (for bulk loads and tests;
    the writer inserts spool records as MsgPack instead, see below)."""
    import pyarrow as pa
    if not _ARROW_TYPES:
        _ARROW_TYPES.update(_arrow_types())
    cls = type(batch[0])
    # One attribute getter per column: several times cheaper than building a tuple per event and transposing.
    arrays = [pa.array(list(map(get, batch)), type=kind) for get, kind in zip(_GETTERS[cls], _ARROW_TYPES[cls])]
    return pa.Table.from_arrays(arrays, names=list(COLUMNS[cls]))


# Spool records double as insert rows. A record is one kind byte, then a msgpack array of the row's values in
# table column order, with `ts` as epoch milliseconds. ClickHouse reads that layout as `FORMAT MsgPack` (values
# one after another, no array header), so the writer inserts a batch by joining records with their first two
# bytes cut off — no per-event Python work on the insert path, and none on a replay from disk either.
# (A separate kind byte rather than a msgspec tagged union keeps the structs exactly as the contract declares.)
KINDS = {b"I": Impression, b"F": Feedback, b"L": Interleaving, b"S": ShadowResult}
_KIND = {cls: kind for kind, cls in KINDS.items()}
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list)
ROW_OFFSET = 2  # kind byte + msgpack fixarray header (both structs have fewer than 16 fields)
_HEADER = {cls: bytes([0x90 | len(names)]) for cls, names in COLUMNS.items()}
_TS_INDEX = {cls: names.index("ts") for cls, names in COLUMNS.items()}


def encode(event: Event) -> bytes:
    """The spool record of an event; TypeError for anything that is not one of the event types."""
    cls = type(event)
    if cls not in _KIND:
        raise TypeError(f"expected one of {', '.join(c.__name__ for c in KINDS.values())}, got {cls.__name__}")
    values = list(msgspec.structs.astuple(event))
    values[_TS_INDEX[cls]] = epoch_ms(event.ts)
    out = bytearray(_KIND[cls])
    _ENCODER.encode_into(values, out, 1)
    if out[1:2] != _HEADER[cls]:  # guards ROW_OFFSET: the record must be kind + fixarray header + values
        raise AssertionError("unexpected msgpack header")
    return bytes(out)


def decode(data: bytes) -> Event:
    cls = KINDS.get(data[:1])
    if cls is None:
        raise ValueError(f"unknown spool record kind {data[:1]!r}")
    values = _DECODER.decode(data[1:])
    ts_index = _TS_INDEX[cls]
    values[ts_index] = datetime.fromtimestamp(values[ts_index] / 1000, tz=timezone.utc)
    return cls(*values)


def epoch_ms(ts: datetime) -> int:
    """DateTime64(3) ticks. Naive datetimes are taken as UTC, the contract's only zone."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return int(ts.timestamp() * 1000)


def msgpack_rows(records: list[bytes]) -> bytes:
    """The body of an `INSERT ... FORMAT MsgPack` for spool records of one kind."""
    return b"".join([r[ROW_OFFSET:] for r in records])
