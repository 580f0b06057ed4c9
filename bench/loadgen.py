"""A lean closed-loop HTTP/1.1 load generator for the benchmarks (the role wrk plays elsewhere).

Why not httpx: measured on this 2-core machine, an httpx.AsyncClient spent about 4.7 ms of CPU per request,
a third of what the gateway itself spends, and it runs on the same two cores as the server it measures, so
the server's figure said more about the client than the server. This client writes pre-encoded request
bytes on keep-alive connections and parses only the status line and Content-Length (an asyncio.Protocol on
uvloop when available): a small fraction of that cost, the same for every server it drives.

    result = run(host, port, path, bodies, concurrency=32, seconds=5.0)      # time-bound, or
    result = run(host, port, path, bodies, concurrency=32, requests=640)    # count-bound
    # {"rps", "p50_ms", "p99_ms", "requests", "errors", "client_cpu_ms_per_request"}
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Sequence


class HttpError(RuntimeError):
    pass


class _Connection(asyncio.Protocol):
    """One keep-alive connection; `send` writes a request and resolves with (status, body) when it is read."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._status = 0
        self._need = -1          # bytes of headers + body expected; -1 = headers not complete yet
        self._body_at = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(f"connection closed by the server ({exc})"))

    def send(self, request: bytes) -> asyncio.Future:
        self._waiter = asyncio.get_running_loop().create_future()
        self._buffer.clear()
        self._need = -1
        self.transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._need < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            self._status = int(head[0].split(" ", 2)[1])
            length = None
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "transfer-encoding" and "chunked" in value.lower():
                    self._fail("chunked responses are not supported by bench/loadgen.py")
                    return
            if length is None:
                self._fail("response without Content-Length")
                return
            self._body_at = end + 4
            self._need = self._body_at + length
        if len(self._buffer) >= self._need and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self._status, bytes(self._buffer[self._body_at:self._need])))

    def _fail(self, why: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HttpError(why))


def encode_requests(host: str, port: int, path: str, bodies: Sequence[dict]) -> list[bytes]:
    out = []
    for body in bodies:
        payload = json.dumps(body, separators=(",", ":")).encode()
        out.append(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return out


async def _drive(host: str, port: int, requests: list[bytes], concurrency: int, seconds: float | None,
                 count: int | None, warmup_s: float) -> dict:
    loop = asyncio.get_running_loop()
    connections = []
    for _ in range(concurrency):
        _, conn = await loop.create_connection(_Connection, host, port)
        connections.append(conn)
    latencies: list[float] = []
    errors = 0
    issued = 0
    start = time.perf_counter()
    measuring_from = start + warmup_s
    end = None if seconds is None else measuring_from + seconds

    async def worker(conn: _Connection) -> None:
        nonlocal issued, errors
        while True:
            if count is not None and issued >= count:
                return
            if end is not None and time.perf_counter() >= end:
                return
            request = requests[issued % len(requests)]
            issued += 1
            sent = time.perf_counter()
            status, _ = await conn.send(request)
            done = time.perf_counter()
            if sent >= measuring_from and (end is None or done <= end):
                if status == 200:
                    latencies.append(done - sent)
                else:
                    errors += 1

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(c) for c in connections))
    cpu = time.process_time() - cpu0
    elapsed = (end - measuring_from) if end is not None else time.perf_counter() - measuring_from
    for conn in connections:
        conn.transport.close()
    if not latencies:
        return {"rps": 0.0, "p50_ms": None, "p99_ms": None, "requests": 0, "errors": errors,
                "client_cpu_ms_per_request": None}
    latencies.sort()
    return {"rps": round(len(latencies) / elapsed, 1), "p50_ms": round(statistics.median(latencies) * 1000, 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 2),
            "requests": len(latencies), "errors": errors,
            "client_cpu_ms_per_request": round(cpu * 1000 / max(issued, 1), 3)}


def run(host: str, port: int, path: str, bodies: Sequence[dict], *, concurrency: int, seconds: float | None = None,
        requests: int | None = None, warmup_s: float = 0.0) -> dict:
    """Closed loop: `concurrency` connections, each sending its next request when the last one answered."""
    if (seconds is None) == (requests is None):
        raise ValueError("give seconds or requests")
    encoded = encode_requests(host, port, path, bodies)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # the infinity venv or a bare Python: the default loop works, at a little more CPU
        runner = asyncio.run
    return runner(_drive(host, port, encoded, concurrency, seconds, requests, warmup_s))
