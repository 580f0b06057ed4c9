"""structlog JSON logs, one line per event, with the request id bound for everything a request logs.

The request id comes from the client's `X-Request-ID` header when it is a sane token, else a fresh one; it is
echoed in the response header, so a client can quote it in a bug report and we can grep for it.

In `abgate serve`, the standard library's logging (uvicorn's own lines and tracebacks, asyncio, warnings) goes
through the same JSON renderer (`stdlib_config`, uvicorn's `log_config`), so every line on stderr parses as JSON.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time

import structlog

REQUEST_ID_HEADER = "x-request-id"
CLIENT_CLOSED_REQUEST = 499  # nginx's code: the client went away before the answer; not the server's failure
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
log = structlog.get_logger("abgate.http")


def _level(level: str) -> int:
    numeric = logging.getLevelName(level.upper())
    return numeric if isinstance(numeric, int) else logging.INFO


def stdlib_config(level: str = "info") -> dict:
    """dictConfig for the standard library's loggers in `abgate serve`: one JSON handler on the root (at WARNING
    or above: other libraries' info lines are not ours to print), uvicorn's loggers without handlers of their
    own, so they propagate to it. Passed to uvicorn as `log_config`, which applies it at start."""
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.stdlib.add_logger_name, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {
            "()": structlog.stdlib.ProcessorFormatter,
            "foreign_pre_chain": shared,
            "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                           structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": logging.getLevelName(max(_level(level), logging.WARNING))},
        "loggers": {name: {"handlers": [], "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")},
    }


def configure(level: str = "info") -> None:
    """JSON lines on stderr. Safe to call more than once (tests build several apps)."""
    numeric = _level(level)
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def request_id_middleware(access_log: bool, on_response=None):
    """ASGI middleware factory: request id in, request id out, one access line per request.

    A client that disconnects while its request is read is logged and counted as 499: Litestar turns the
    disconnect into a 500 that no one receives, and it is no failure of the gateway's. (One that leaves later
    is not seen: nothing reads from the connection after the body, so it is counted with its answer.)"""

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
            status = {"code": 500, "started": False, "disconnected": False}

            async def receive_watching():
                message = await receive()
                if message["type"] == "http.disconnect" and not status["started"]:
                    status["disconnected"] = True
                return message

            async def send_with_id(message):
                if message["type"] == "http.response.start":
                    status["started"] = True
                    status["code"] = message["status"]
                    message["headers"] = list(message.get("headers", [])) + [
                        (REQUEST_ID_HEADER.encode(), request_id.encode())]
                await send(message)

            structlog.contextvars.bind_contextvars(request_id=request_id)
            try:
                await app(scope, receive_watching, send_with_id)
            finally:
                structlog.contextvars.unbind_contextvars("request_id")
                if status["disconnected"]:
                    status["code"] = CLIENT_CLOSED_REQUEST
                if on_response is not None:
                    on_response(scope, status["code"])
                if access_log or status["disconnected"]:
                    log.info("client disconnected" if status["disconnected"] else "request", request_id=request_id,
                             method=scope.get("method"), path=scope.get("path"), status=status["code"],
                             ms=round((time.perf_counter() - started) * 1000, 2))

        return middleware

    return factory
