"""The simulator's HTTP client: HTTP/1.1 over one keep-alive connection per simulated-user worker, parsed by
httptools (the C parser uvicorn serves with).

Why not httpx: a load generator must cost less than what it loads. Profiled against the demo's gateway on
the 2 shared cores, httpx's AsyncClient took ~1.4 ms of CPU per request, as much as the gateway spent
answering it, so the simulator was the bottleneck (one core busy, the gateway waiting on it). This client
does only what the simulator needs (POST a JSON body, read status and body; Content-Length or chunked
answers) at a fraction of that. It talks real HTTP over TCP: uvicorn cannot tell it from any other client.
(bench/loadgen.py is the benchmarks' own lean client: it must also run in other servers' environments, without
abgate's dependencies, so it stays separate and parses only what a benchmark needs.)

A connection the server closed while it sat idle (uvicorn's keep-alive timeout) is reopened and the request
sent again only when not a byte of an answer came back: the server closes idle connections only between
requests, so such a request was never read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools
import msgspec


class HTTPError(Exception):
    """No answer: the connection failed, closed mid-answer, or the timeout passed."""


@dataclass(frozen=True)
class Reply:
    status_code: int
    content: bytes

    def json(self):
        return msgspec.json.decode(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class _Answer:
    """httptools callbacks for one response."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.started = False
        self.complete = False
        self.keep_alive = False
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.started = True

    def on_headers_complete(self) -> None:
        # Only meaningful here: once the message completes the parser has moved on to the next one.
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


class Connection:
    """One keep-alive connection to `base` (http://host:port), opened on first use."""

    def __init__(self, base: str, timeout_s: float) -> None:
        parts = urlsplit(base)
        if parts.scheme != "http":
            raise ValueError(f"the simulator speaks plain HTTP to a local gateway, not {parts.scheme!r}")
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout_s = timeout_s
        self._host_header = f"{self.host}:{self.port}".encode()
        self._encoder = msgspec.json.Encoder()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: object) -> Reply:
        payload = self._encoder.encode(body)
        request = b"".join((b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", self._host_header,
                            b"\r\nContent-Type: application/json\r\nContent-Length: ", str(len(payload)).encode(),
                            b"\r\n\r\n", payload))
        try:
            return await asyncio.wait_for(self._exchange(request), self.timeout_s)
        except (asyncio.TimeoutError, OSError, httptools.HttpParserError) as exc:
            await self.close()
            raise HTTPError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from None

    async def _exchange(self, request: bytes) -> Reply:
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            answer = _Answer()
            self._writer.write(request)
            try:
                await self._writer.drain()
                while not answer.complete:
                    data = await self._reader.read(65536)
                    if not data:
                        raise ConnectionResetError("the server closed the connection")
                    answer.parser.feed_data(data)
            except ConnectionError:
                await self.close()
                if attempt == 1 and not answer.started:  # closed while idle: the request was never read
                    continue
                raise
            if not answer.keep_alive:
                await self.close()
            return Reply(answer.parser.get_status_code(), bytes(answer.body))
        raise AssertionError("unreachable")

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass
