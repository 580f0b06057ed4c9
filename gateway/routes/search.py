"""POST /v1/search, /v1/feedback and /v1/feedback/batch: HTTP in and out; what they do is gateway/service.py's."""

from __future__ import annotations

from litestar import Controller, post
from litestar.params import SkipValidation

from gateway.routes.body import require_json_body
from gateway.routes.schemas import (FeedbackBatchRequest, FeedbackBatchResponse, FeedbackRequest, FeedbackResponse,
                                    Result, SearchRequest, SearchResponse)
from gateway.service import FeedbackOutcome, SearchService


class SearchController(Controller):
    path = "/v1"
    tags = ["search"]
    guards = [require_json_body]

    @post("/search", status_code=200, summary="Search with the unit's arm; the response is an impression")
    async def search(self, data: SearchRequest, service: SkipValidation[SearchService]) -> SearchResponse:
        out = await service.search(data.query, data.unit_id, data.k, data.filters)
        return SearchResponse(out.impression_id, out.experiment, out.arm,
                              [Result(h.doc_id, h.score, h.position, h.metadata) for h in out.hits])

    @post("/feedback", status_code=202, summary="Record a click, dwell or conversion on a served impression")
    async def feedback(self, data: FeedbackRequest, service: SkipValidation[SearchService]) -> FeedbackResponse:
        out = await service.feedback(data.impression_id, data.type, data.doc_id, data.position, data.value,
                                     idempotency_key=data.idempotency_key)
        return _answer(out)

    @post("/feedback/batch", status_code=202,
          summary="Record up to 100 feedback events at once (e.g. a page's buffered clicks): all or none")
    async def feedback_batch(self, data: FeedbackBatchRequest,
                             service: SkipValidation[SearchService]) -> FeedbackBatchResponse:
        return FeedbackBatchResponse([_answer(o) for o in await service.feedback_batch(data.events)])


def _answer(out: FeedbackOutcome) -> FeedbackResponse:
    served = out.impression
    return FeedbackResponse(out.event_id, served.impression_id, served.experiment, served.arm)
