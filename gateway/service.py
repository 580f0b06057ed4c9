"""What a search and a feedback request do, apart from HTTP: the logic the thin routes call.

    search:   route the unit -> its arm's micro-batcher (encode + FAISS) -> filters, score threshold, top k
              -> sign the impression id (it carries experiment, arm, unit and the shown doc ids) -> log it
    feedback: verify the signed impression id (gateway/impression_ids.py: no memory or store lookup, so any
              replica answers) -> check the document and its position -> log the event, with experiment, arm
              and unit copied from the impression, under an id that makes a client's retry collapse in the
              store (see `feedback_id`); a batch is checked whole before any of it is logged

Errors are domain errors (experiments/errors.py's tree plus the three below); gateway/routes/errors.py maps
each to its HTTP answer in one place.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from experiments.errors import AbgateError, InputError
from gateway.batcher import BatcherClosed
from gateway.designs import (
    INTERLEAVED_ARM,
    ShadowRunner,
    design_of,
    interleaved,
    ranked,
    sampled,
)
from gateway.eventlog.events import (
    Event,
    Feedback,
    Impression,
    feedback_event_id,
    new_event_id,
    utcnow,
)
from gateway.impression_ids import (
    ImpressionRejected,
    ImpressionSigner,
    ImpressionTooOld,
    SignedImpression,
)
from gateway.prometheus import GatewayMetrics
from gateway.runtime import Runtime
from gateway.search import Hit

# Feedback that can happen once per impression and document: its id comes from (impression, type, doc), so
# every copy of it is one row. A click is a distinct clicked document to every metric; a dwell is read as the
# impression's longest dwell, so more than one row per document adds nothing.
ONCE_PER_DOCUMENT = ("click", "dwell")
# Characters that show nothing: control (NUL, ...), format (zero-width), surrogates and separators.
_INVISIBLE = {"Cc", "Cf", "Cs", "Zs", "Zl", "Zp"}


def shadow_share(experiment) -> float:
    """The share of a shadow experiment's requests the candidate also answers (YAML `shadow.sample`)."""
    value = getattr(experiment, "shadow_sample", None)
    return 1.0 if value is None else float(value)


class NotFound(InputError):
    http_status = 404


class Gone(InputError):
    http_status = 410


class Unavailable(AbgateError):
    """Retry shortly: the store, the event log or a reload is in the way. HTTP 503."""
    http_status = 503


@dataclass(frozen=True)
class SearchOutcome:
    impression_id: str
    experiment: str | None
    arm: str
    hits: list[Hit]


@dataclass(frozen=True)
class FeedbackOutcome:
    event_id: str
    impression: SignedImpression


class EventSink:
    """Where events go: the event writer, or nowhere when logging is off (benchmarks)."""

    def __init__(self, writer=None) -> None:
        self.writer = writer

    @property
    def on(self) -> bool:
        return self.writer is not None

    def submit(self, event: Event) -> None:
        if self.writer is not None and not self.writer.submit(event):
            raise Unavailable("the event log cannot keep events right now (disk full or shutting down); "
                              "retry shortly")


class SearchService:
    def __init__(self, runtime: Runtime, signer: ImpressionSigner, events: EventSink, metrics: GatewayMetrics,
                 shadow: ShadowRunner | None = None) -> None:
        self.runtime = runtime
        self.signer = signer
        self.shadow = shadow
        self.events = events
        self.metrics = metrics

    async def search(self, query: str, unit_id: str, k: int | None = None,
                     filters: dict | None = None) -> SearchOutcome:
        if not any(not ch.isspace() and unicodedata.category(ch) not in _INVISIBLE for ch in query):
            raise InputError("query has no visible character (only whitespace or control characters): send the "
                             "text to search for", field="query")
        started = time.perf_counter()
        assignment, arm_rt = self.runtime.route(unit_id)
        arm, experiment = assignment.arm, assignment.experiment
        design = design_of(experiment) if assignment.enrolled else "ab"
        if design == "shadow":  # every user gets the control; the candidates answer off the request path
            arm = experiment.control_arm
            arm_rt = self.runtime.arm_runtime(arm)
        try:
            if design == "interleaving":
                hits, merged, encoders, indexes = await interleaved(self.runtime, experiment, unit_id, query, k,
                                                                    filters)
                arm_name = INTERLEAVED_ARM
            else:
                hits = await ranked(arm_rt, query, k or arm.top_k, filters)
                merged, arm_name = None, arm.name
                encoders, indexes = arm_rt.encoder.checksum, arm_rt.index.checksum
        except (BatcherClosed, KeyError):  # a reload unloaded an arm between routing and queueing: retry is safe
            raise Unavailable("the experiments were reloaded while this request was routed; retry it") from None
        seconds = time.perf_counter() - started
        name = assignment.experiment_name or ""
        doc_ids = [h.doc_id for h in hits]
        impression_id = self.signer.sign(name, arm_name, unit_id, doc_ids)
        self.events.submit(Impression(impression_id, utcnow(), name, arm_name, unit_id, assignment.enrolled,
                                      query, doc_ids, [h.score for h in hits], round(seconds * 1000, 3),
                                      encoders, indexes))
        if merged is not None:
            self.events.submit(merged.logged(impression_id))
        if design == "shadow" and self.shadow is not None and sampled(impression_id, shadow_share(experiment)):
            self.shadow.offer(self.shadow.job(self.runtime, experiment, impression_id, unit_id, query,
                                              k or arm.top_k, filters))
        self.metrics.observe_search(name, arm_name, seconds)
        return SearchOutcome(impression_id, assignment.experiment_name, arm_name, hits)

    async def feedback(self, impression_id: str, type: str, doc_id: str, position: int,
                       value: float | None = None, idempotency_key: str | None = None) -> FeedbackOutcome:
        event, served = self._checked_feedback(impression_id, type, doc_id, position, value, idempotency_key)
        self._log_feedback(event)
        return FeedbackOutcome(event.event_id, served)

    async def feedback_batch(self, items: Sequence) -> list[FeedbackOutcome]:
        """Several feedback events (objects with FeedbackRequest's fields), all or nothing: each is checked
        before any is logged, and an error names the event (`events[3].position`). A client retries a batch
        whole, so every event in one must be idempotent: a conversion needs its idempotency_key."""
        checked = []
        for i, item in enumerate(items):
            try:
                if item.type not in ONCE_PER_DOCUMENT and item.idempotency_key is None:
                    raise InputError("a conversion in a batch needs an idempotency_key (the client's id for it): a "
                                     "batch is retried whole, and without a key a retry would count it twice",
                                     field="idempotency_key")
                checked.append(self._checked_feedback(item.impression_id, item.type, item.doc_id, item.position,
                                                      item.value, item.idempotency_key))
            except AbgateError as exc:
                exc.field = f"events[{i}]" + (f".{exc.field}" if exc.field else "")
                raise
        for event, _ in checked:
            self._log_feedback(event)
        return [FeedbackOutcome(event.event_id, served) for event, served in checked]

    def _checked_feedback(self, impression_id: str, type: str, doc_id: str, position: int, value: float | None,
                          idempotency_key: str | None) -> tuple[Feedback, SignedImpression]:
        served = self.served_impression(impression_id)
        if not served.shown(doc_id, position):
            elsewhere = next((p for p in range(1, served.count + 1) if served.shown(doc_id, p)), None)
            if elsewhere is not None:
                raise InputError(f"doc {doc_id!r} was shown at position {elsewhere}, not {position}",
                                 field="position")
            raise InputError("this document was not shown in the impression: send a doc_id from its results",
                             field="doc_id")
        if type == "dwell" and value is None:
            raise InputError("dwell feedback needs value: the seconds spent on the document", field="value")
        value = 1.0 if type == "click" else (value if value is not None else 1.0)
        event_id = feedback_id(served.impression_id, type, doc_id, idempotency_key)
        return Feedback(event_id, served.impression_id, utcnow(), served.experiment, served.arm, served.unit_id,
                        type, doc_id, position, float(value)), served

    def _log_feedback(self, event: Feedback) -> None:
        self.events.submit(event)
        self.metrics.feedback.labels(event.type).inc()

    def served_impression(self, impression_id: str) -> SignedImpression:
        """The facts the signed id carries (gateway/impression_ids.py): a signature check, no memory or store
        lookup, so any replica answers; 404 when the signature fails, 410 when older than the ttl."""
        try:
            return self.signer.verify(impression_id)
        except ImpressionRejected:
            raise NotFound("unknown impression id: this gateway did not sign it (send feedback only for ids "
                           "returned by /v1/search, unchanged)", field="impression_id") from None
        except ImpressionTooOld:
            raise Gone(f"this impression is older than {self.signer.ttl_s:g} seconds; feedback for it is no "
                       "longer accepted", field="impression_id") from None


def feedback_id(impression_id: str, type: str, doc_id: str, idempotency_key: str | None) -> str:
    """A click or dwell: one id per (impression, type, doc), the key ignored. A conversion can legitimately
    repeat, so without a key each one is new; with one, its retries share an id (docs/event-log.md)."""
    if type in ONCE_PER_DOCUMENT:
        return feedback_event_id(impression_id, type, doc_id)
    if idempotency_key is not None:
        return feedback_event_id(impression_id, type, doc_id, idempotency_key)
    return new_event_id()
