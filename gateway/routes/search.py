"""POST /v1/search and POST /v1/feedback: thin handlers over the runtime, cache and event writer."""

from __future__ import annotations

import time

from litestar import Controller, Request, post

from gateway.batcher import BatcherClosed
from experiments.errors import InputError
from gateway.eventlog.events import Feedback, Impression, new_event_id, utcnow
from gateway.impressions import ImpressionExpired, ImpressionNotFound, ImpressionUnverifiable
from gateway.routes.errors import ApiError
from gateway.routes.schemas import (FeedbackRequest, FeedbackResponse, Result, SearchRequest, SearchResponse)

FILTER_OVERSAMPLE = 10   # with filters, search k * 10 (at least 100) rows, then keep the k that match


class SearchController(Controller):
    path = "/v1"
    tags = ["search"]

    @post("/search", status_code=200, summary="Search with the unit's arm; the response is an impression")
    async def search(self, request: Request, data: SearchRequest) -> SearchResponse:
        gw = request.app.state.gateway
        started = time.perf_counter()
        assignment, arm_rt = gw.runtime.serving.route(data.unit_id)
        arm = assignment.arm
        k = data.k or arm.top_k
        k_search = max(k * FILTER_OVERSAMPLE, 100) if data.filters else k
        try:
            hits = await arm_rt.batcher.search(data.query, arm_rt.index, k_search)
        except BatcherClosed:  # only if a reload unloaded this arm between routing and queueing: retry is safe
            raise ApiError(503, "the experiments were reloaded while this request was routed; retry it") from None
        if data.filters:
            hits = [h for h in hits if all(h.metadata.get(f) == v for f, v in data.filters.items())]
        if arm.score_threshold is not None:
            hits = [h for h in hits if h.score >= arm.score_threshold]
        results = [Result(h.doc_id, h.score, position, h.metadata) for position, h in enumerate(hits[:k], 1)]
        seconds = time.perf_counter() - started
        experiment = assignment.experiment_name
        impression_id = new_event_id()
        gw.impressions.add(impression_id, experiment or "", arm.name, data.unit_id, [r.doc_id for r in results])
        gw.submit(Impression(impression_id, utcnow(), experiment or "", arm.name, data.unit_id, assignment.enrolled,
                             data.query, [r.doc_id for r in results], [r.score for r in results],
                             round(seconds * 1000, 3), arm_rt.encoder.checksum, arm_rt.index.checksum))
        gw.metrics.observe_search(experiment or "", arm.name, seconds)
        return SearchResponse(impression_id, experiment, arm.name, results)

    @post("/feedback", status_code=202, summary="Record a click, dwell or conversion on a served impression")
    async def feedback(self, request: Request, data: FeedbackRequest) -> FeedbackResponse:
        gw = request.app.state.gateway
        served = await _served_impression(gw, data.impression_id)
        if data.doc_id not in served.doc_ids:
            raise ApiError(422, "this document was not shown in the impression: send a doc_id from its results",
                           field="doc_id")
        if served.doc_ids.index(data.doc_id) + 1 != data.position:
            raise ApiError(422, f"doc {data.doc_id!r} was shown at position {served.doc_ids.index(data.doc_id) + 1}, "
                                f"not {data.position}", field="position")
        if data.type == "dwell" and data.value is None:
            raise InputError("dwell feedback needs value: the seconds spent on the document", field="value")
        value = 1.0 if data.type == "click" else (data.value if data.value is not None else 1.0)
        event_id = new_event_id()
        gw.submit(Feedback(event_id, served.impression_id, utcnow(), served.experiment, served.arm, served.unit_id,
                           data.type, data.doc_id, data.position, float(value)))
        gw.metrics.feedback.labels(data.type).inc()
        return FeedbackResponse(event_id, served.impression_id, served.experiment, served.arm)


async def _served_impression(gw, impression_id: str):
    """This process's cache, else the event log (gateway/impressions.py): 404 nowhere, 410 too old, 503 when
    the store cannot be asked right now."""
    try:
        try:
            return gw.impressions.get(impression_id)
        except ImpressionNotFound:
            if gw.stored_impressions is None:  # event logging off: the cache is all there is
                raise
            return await gw.stored_impressions.get(impression_id)
    except ImpressionNotFound:
        raise ApiError(404, "unknown impression id: not among this gateway's recent impressions nor in the event "
                            "log. Send feedback only for impression ids returned by /v1/search; one served a "
                            "moment ago by another gateway process may not be logged yet: retry in a few seconds",
                       field="impression_id") from None
    except ImpressionExpired:
        raise ApiError(410, f"this impression is older than {gw.settings.impression_ttl_s:g} seconds; "
                            "feedback for it is no longer accepted", field="impression_id") from None
    except ImpressionUnverifiable as exc:
        raise ApiError(503, f"cannot check this impression right now ({exc}); retry in a few seconds",
                       field="impression_id") from None
