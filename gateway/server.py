"""uvicorn, with the limits a service facing the network needs, and a drain on SIGTERM.

uvicorn times out idle keep-alive connections but not a client that sends its headers or body slowly: 16
sockets trickling header bytes held the server for as long as they liked, and an 8 MB header was read whole.
`LimitedProtocol` (httptools) adds, per connection:

    header_timeout_s   the request line and headers must arrive within this time      -> the socket is closed
    body_timeout_s     the body must arrive within this time after the headers          -> the socket is closed
    max_header_bytes   bytes before the end of the headers                              -> 431, then closed

and `max_connections` (uvicorn's limit_concurrency) answers 503 beyond that many connections and tasks.

SIGTERM drains: /readyz answers 503 at once so load balancers stop sending, requests keep being served for
`drain_s`, then uvicorn stops accepting, finishes the requests in flight, and the lifespan flushes the event
writer before the process exits. SIGINT (Ctrl-C) skips the wait.
"""

from __future__ import annotations

import signal
import threading

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


_BODY = (b'{"error": "the request headers are too large: send fewer or smaller headers", "status": 431, '
         b'"field": "headers"}')
_TOO_LARGE = (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
              b"connection: close\r\ncontent-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


class Lifecycle:
    """Shared by the app (readyz) and the server (signals)."""

    def __init__(self) -> None:
        self.draining = False


def protocol_for(header_timeout_s: float, body_timeout_s: float, max_header_bytes: int) -> type:
    class LimitedProtocol(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_bytes = 0
            self._in_headers = True
            self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def _cancel(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                self._header_bytes += len(data)
                if self._header_bytes > max_header_bytes:
                    self._cancel()
                    self.transport.write(_TOO_LARGE)
                    self.transport.close()
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if not self._in_headers:  # a keep-alive connection's next request: time its headers again
                self._in_headers, self._header_bytes = True, 0
                self._cancel()
                self._deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._cancel()
            self._deadline = self.loop.call_later(body_timeout_s, self._too_slow)
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._cancel()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self._cancel()
            super().connection_lost(exc)

    return LimitedProtocol


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, drain_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.drain_s = drain_s

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and self.drain_s > 0 and not self.lifecycle.draining:
            self.lifecycle.draining = True  # readyz answers 503 from now on
            threading.Timer(self.drain_s, self._exit, args=(sig, frame)).start()
            return
        self._exit(sig, frame)

    def _exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        # uvicorn re-raises a captured signal once it has shut down; a drained, flushed gateway exits 0 instead.
        self._captured_signals.clear()


def serve(app, settings, lifecycle: Lifecycle, log_config: dict) -> None:
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", access_log=False, log_level="warning",
        log_config=log_config, http=protocol_for(settings.header_timeout_s, settings.body_timeout_s,
                                                 settings.max_header_bytes),
        limit_concurrency=settings.max_connections, timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=int(max(settings.drain_s, 1) + 30))
    DrainingServer(config, lifecycle, settings.drain_s).run()
