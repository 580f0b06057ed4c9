"""Every error leaves as JSON {error, status, field?, request_id}: mapped here, in one place.

    validation of a body or parameter (msgspec / Litestar)  -> 422, field = the first bad field
    body over max_body_bytes                                 -> 413
    body empty, not JSON, too deep / not sent as JSON        -> 400 / 415 (gateway/routes/body.py)
    InputError (bad input found by our code)                 -> 422, or its `http_status` (404, 410)
    other AbgateError (store or event log unavailable, ...)  -> 503, or its `http_status`
    ApiError(status, ...)                                    -> that status
    other HTTPException (404 route, 405 method, ...)         -> its status
    anything else                                            -> 500, logged with the request id, no details
"""

from __future__ import annotations

import re

import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE

from experiments.errors import AbgateError, InputError

log = structlog.get_logger("abgate.http")


class ApiError(HTTPException):
    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(detail=message, status_code=status)
        self.field = field


def _body(request: Request, status: int, message: str, field: str | None = None, details=None) -> Response:
    content = {"error": message, "status": status, "field": field,
               "request_id": request.scope.get("state", {}).get("request_id")}
    if details:
        content["details"] = details
    return Response(content, status_code=status, media_type="application/json")


def _field_of(detail: dict) -> str | None:
    """The field a validation problem is about. msgspec names body fields inside its message:
    "Expected `int` >= 1 - at `$.k`", "Object missing required field `unit_id`"; Litestar's key is then
    just "data" (the body), so the message wins when it names something."""
    message = str(detail.get("message", ""))
    at = re.search(r"at `\$\.?([^`]*)`", message)
    if at and at.group(1):
        field = at.group(1)
        named = re.search(r"field `([^`]+)`", message)
        return f"{field}.{named.group(1)}" if named else field
    named = re.search(r"field `([^`]+)`", message)
    if named:
        return named.group(1)
    key = detail.get("key")
    return str(key) if key else None


def validation_handler(request: Request, exc: ValidationException) -> Response:
    details = [d for d in (exc.extra or []) if isinstance(d, dict)] if isinstance(exc.extra, list) else []
    field = _field_of(details[0]) if details else None
    message = str(details[0].get("message")) if details else str(exc.detail)
    if field and "`" not in message and field not in message:
        message = f"{field}: {message}"
    clean = [{"field": _field_of(d), "message": str(d.get("message")), "source": d.get("source")} for d in details]
    return _body(request, 422, message or "the request does not match the schema", field, clean)


def http_handler(request: Request, exc: HTTPException) -> Response:
    status = exc.status_code
    message = str(exc.detail)
    if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE:
        limit = request.app.state.settings.max_body_bytes
        message = f"the request body is larger than {limit} bytes: send a shorter query or fewer filters"
    elif status == 400 and not isinstance(exc, ApiError):  # Litestar's own terse 400s; ours already say what to do
        message = f"the request is malformed ({message}): send a JSON body that matches the OpenAPI schema"
    details = exc.extra if isinstance(exc.extra, list) else None
    response = _body(request, status, message, getattr(exc, "field", None), details)
    for name, value in (exc.headers or {}).items():  # e.g. WWW-Authenticate on a 401
        response.headers[name] = value
    return response


def abgate_handler(request: Request, exc: AbgateError) -> Response:
    status = getattr(exc, "http_status", None) or (422 if isinstance(exc, InputError) else 503)
    return _body(request, status, exc.message, exc.field)


def internal_handler(request: Request, exc: Exception) -> Response:
    log.error("unhandled error", path=request.url.path, exc_info=exc)
    return _body(request, 500, "internal error: the gateway failed to answer; it is logged with this request_id")


EXCEPTION_HANDLERS = {
    ValidationException: validation_handler,
    HTTPException: http_handler,
    AbgateError: abgate_handler,
    Exception: internal_handler,
}
