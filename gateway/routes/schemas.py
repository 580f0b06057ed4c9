"""Request and response bodies (msgspec), with the request limits in them so they show in the OpenAPI document.

Limits (docs/gateway.md): query 1..1000 characters, unit_id 1..256, k 1..100, at most 16 filters,
idempotency_key 1..128, 1..100 events in a feedback batch; types are strict (`"k": "10"` is a 422,
gateway/routes/body.py); the whole body is capped by the `max_body_bytes` setting (64 KiB by default) -> 413.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MAX_QUERY_CHARS = 1000
MAX_UNIT_ID_CHARS = 256
MAX_K = 100
MAX_FILTERS = 16
MAX_IDEMPOTENCY_KEY_CHARS = 128

FilterValue = Annotated[str, Meta(max_length=256)] | int | float | bool


class SearchRequest(msgspec.Struct, forbid_unknown_fields=True):
    query: Annotated[str, Meta(min_length=1, max_length=MAX_QUERY_CHARS, description="the text to search for")]
    unit_id: Annotated[str, Meta(min_length=1, max_length=MAX_UNIT_ID_CHARS,
                                 description="the randomized unit (user or session id)")]
    k: Annotated[int, Meta(ge=1, le=MAX_K)] | None = None
    filters: Annotated[dict[Annotated[str, Meta(min_length=1, max_length=64)], FilterValue],
                       Meta(max_length=MAX_FILTERS,
                            description="exact matches on document metadata")] | None = None


class Result(msgspec.Struct):
    doc_id: str
    score: float
    position: int
    metadata: dict


class SearchResponse(msgspec.Struct):
    impression_id: str
    experiment: str | None
    arm: str
    results: list[Result]


class FeedbackRequest(msgspec.Struct, forbid_unknown_fields=True):
    impression_id: Annotated[str, Meta(min_length=1, max_length=2048)]  # signed: carries its facts
    type: Literal["click", "dwell", "conversion"]
    doc_id: Annotated[str, Meta(min_length=1, max_length=256)]
    position: Annotated[int, Meta(ge=1, le=MAX_K)]
    value: Annotated[float, Meta(ge=0, le=1e9)] | None = None
    idempotency_key: Annotated[str, Meta(
        min_length=1, max_length=MAX_IDEMPOTENCY_KEY_CHARS,
        description="the client's id for this event (e.g. a UUID), the same on every retry: a conversion sent again "
                    "with the same key is stored once. Clicks and dwells are deduplicated per impression and "
                    "document without one")] | None = None


class FeedbackResponse(msgspec.Struct):
    event_id: str
    impression_id: str
    experiment: str
    arm: str


MAX_FEEDBACK_BATCH = 100


class FeedbackBatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    events: Annotated[list[FeedbackRequest], Meta(
        min_length=1, max_length=MAX_FEEDBACK_BATCH,
        description="1..100 feedback events, checked together: one bad event rejects the batch and none is "
                    "logged; conversions need an idempotency_key (a batch is retried whole)")]


class FeedbackBatchResponse(msgspec.Struct):
    events: list[FeedbackResponse]


class ErrorBody(msgspec.Struct):
    error: str
    status: int
    field: str | None = None
    request_id: str | None = None
    details: list[dict] | None = None
