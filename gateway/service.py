"""What a search and a feedback request do, apart from HTTP: the logic the thin routes call.

    search:   route the unit -> its arm's micro-batcher (encode + FAISS) -> filters, score threshold, top k
              -> remember the impression (feedback checks) -> log it -> count it
    feedback: find the served impression (this process's cache, else the event log) -> check the document and
              its position -> log the event, with experiment, arm and unit copied from the impression

Errors are domain errors (experiments/errors.py's tree plus the three below); gateway/routes/errors.py maps
each to its HTTP answer in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from experiments.errors import AbgateError, InputError
from gateway.batcher import BatcherClosed
from gateway.eventlog.events import Event, Feedback, Impression, new_event_id, utcnow
from gateway.impressions import (ImpressionCache, ImpressionExpired, ImpressionNotFound, ImpressionUnverifiable,
                                 ServedImpression, StoredImpressions)
from gateway.prometheus import GatewayMetrics
from gateway.runtime import Runtime
from gateway.search import Hit

FILTER_OVERSAMPLE = 10   # with filters, search k * 10 (at least 100) rows, then keep the k that match


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
    impression: ServedImpression


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
    def __init__(self, runtime: Runtime, impressions: ImpressionCache, events: EventSink, metrics: GatewayMetrics,
                 stored: StoredImpressions | None = None, impression_ttl_s: float = 3600.0) -> None:
        self.runtime = runtime
        self.impressions = impressions
        self.events = events
        self.metrics = metrics
        self.stored = stored
        self.impression_ttl_s = impression_ttl_s

    async def search(self, query: str, unit_id: str, k: int | None = None,
                     filters: dict | None = None) -> SearchOutcome:
        started = time.perf_counter()
        assignment, arm_rt = self.runtime.route(unit_id)
        arm = assignment.arm
        k = k or arm.top_k
        k_search = max(k * FILTER_OVERSAMPLE, 100) if filters else k
        try:
            hits = await arm_rt.batcher.search(query, arm_rt.index, k_search)
        except BatcherClosed:  # only if a reload unloaded this arm between routing and queueing: retry is safe
            raise Unavailable("the experiments were reloaded while this request was routed; retry it") from None
        if filters:
            hits = [h for h in hits if all(h.metadata.get(f) == v for f, v in filters.items())]
        if arm.score_threshold is not None:
            hits = [h for h in hits if h.score >= arm.score_threshold]
        hits = [Hit(h.doc_id, h.score, position, h.metadata) for position, h in enumerate(hits[:k], 1)]
        seconds = time.perf_counter() - started
        experiment = assignment.experiment_name or ""
        impression_id = new_event_id()
        doc_ids = [h.doc_id for h in hits]
        self.impressions.add(impression_id, experiment, arm.name, unit_id, doc_ids)
        self.events.submit(Impression(impression_id, utcnow(), experiment, arm.name, unit_id, assignment.enrolled,
                                      query, doc_ids, [h.score for h in hits], round(seconds * 1000, 3),
                                      arm_rt.encoder.checksum, arm_rt.index.checksum))
        self.metrics.observe_search(experiment, arm.name, seconds)
        return SearchOutcome(impression_id, assignment.experiment_name, arm.name, hits)

    async def feedback(self, impression_id: str, type: str, doc_id: str, position: int,
                       value: float | None = None) -> FeedbackOutcome:
        served = await self.served_impression(impression_id)
        if doc_id not in served.doc_ids:
            raise InputError("this document was not shown in the impression: send a doc_id from its results",
                             field="doc_id")
        shown_at = served.doc_ids.index(doc_id) + 1
        if shown_at != position:
            raise InputError(f"doc {doc_id!r} was shown at position {shown_at}, not {position}", field="position")
        if type == "dwell" and value is None:
            raise InputError("dwell feedback needs value: the seconds spent on the document", field="value")
        value = 1.0 if type == "click" else (value if value is not None else 1.0)
        event_id = new_event_id()
        self.events.submit(Feedback(event_id, served.impression_id, utcnow(), served.experiment, served.arm,
                                    served.unit_id, type, doc_id, position, float(value)))
        self.metrics.feedback.labels(type).inc()
        return FeedbackOutcome(event_id, served)

    async def served_impression(self, impression_id: str) -> ServedImpression:
        """This process's cache, else the event log (gateway/impressions.py): 404 nowhere, 410 too old, 503 when
        the store cannot be asked right now."""
        try:
            try:
                return self.impressions.get(impression_id)
            except ImpressionNotFound:
                if self.stored is None:  # event logging off: the cache is all there is
                    raise
                return await self.stored.get(impression_id)
        except ImpressionNotFound:
            raise NotFound("unknown impression id: not among this gateway's recent impressions nor in the event "
                           "log. Send feedback only for impression ids returned by /v1/search; one served a "
                           "moment ago by another gateway process may not be logged yet: retry in a few seconds",
                           field="impression_id") from None
        except ImpressionExpired:
            raise Gone(f"this impression is older than {self.impression_ttl_s:g} seconds; feedback for it is no "
                       "longer accepted", field="impression_id") from None
        except ImpressionUnverifiable as exc:
            raise Unavailable(f"cannot check this impression right now ({exc}); retry in a few seconds",
                              field="impression_id") from None
