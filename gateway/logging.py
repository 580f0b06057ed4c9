"""structlog JSON logs, one line per event, with the request id bound for everything a request logs.

The request id comes from the client's `X-Request-ID` header when it is a sane token, else a fresh one; it is
echoed in the response header, so a client can quote it in a bug report and we can grep for it.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time

import structlog

REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
log = structlog.get_logger("abgate.http")


def configure(level: str = "info") -> None:
    """JSON lines on stderr. Safe to call more than once (tests build several apps)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def request_id_middleware(access_log: bool, on_response=None):
    """ASGI middleware factory: request id in, request id out, one access line per request."""

    def factory(app):
        async def middleware(scope, receive, send):
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            given = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                          if k == REQUEST_ID_HEADER.encode()), "")
            request_id = given if _SAFE_ID.match(given) else secrets.token_hex(8)
            scope.setdefault("state", {})["request_id"] = request_id
            started = time.perf_counter()
            status = {"code": 500}

            async def send_with_id(message):
                if message["type"] == "http.response.start":
                    status["code"] = message["status"]
                    message["headers"] = list(message.get("headers", [])) + [
                        (REQUEST_ID_HEADER.encode(), request_id.encode())]
                await send(message)

            structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                await app(scope, receive, send_with_id)
            finally:
                structlog.contextvars.unbind_contextvars("request_id")
                if on_response is not None:
                    on_response(scope, status["code"])
                if access_log:
                    log.info("request", request_id=request_id, method=scope.get("method"), path=scope.get("path"),
                             status=status["code"], ms=round((time.perf_counter() - started) * 1000, 2))

        return middleware

    return factory
