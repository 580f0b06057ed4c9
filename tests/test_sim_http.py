"""The simulator's HTTP/1.1 client (gateway/simulation/http.py) against small real TCP servers: keep-alive,
chunked answers, a server that closes idle connections, one that never answers, one that hangs up mid-answer."""

from __future__ import annotations

import asyncio

import pytest

from gateway.simulation.http import Connection, HTTPError


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


def _serve(handler):
    """Run `handler(reader, writer, state)` per connection on a free port; yields (base url, state)."""
    state = {"connections": 0, "requests": []}

    async def on_connect(reader, writer):
        state["connections"] += 1
        try:
            await handler(reader, writer, state)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return on_connect, state


async def _with_server(handler, scenario):
    on_connect, state = _serve(handler)
    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await scenario(f"http://127.0.0.1:{port}", state), state
    finally:
        server.close()
        await server.wait_closed()


def _answer(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n".encode()
            + extra + b"\r\n" + body)


def test_keep_alive_reuses_one_connection_and_reads_status_and_json():
    async def handler(reader, writer, state):
        while True:
            body = await _read_request(reader)
            state["requests"].append(body)
            writer.write(_answer(b'{"echo": ' + body + b"}", "202 Accepted"))
            await writer.drain()

    async def scenario(base, state):
        conn = Connection(base, timeout_s=5)
        replies = [await conn.post("/v1/feedback", {"n": i}) for i in range(3)]
        await conn.close()
        return replies

    replies, state = asyncio.run(_with_server(handler, scenario))
    assert [r.status_code for r in replies] == [202] * 3
    assert [r.json()["echo"]["n"] for r in replies] == [0, 1, 2]
    assert state["connections"] == 1 and state["requests"] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


def test_chunked_answer_and_error_status_bodies_are_read_whole():
    async def handler(reader, writer, state):
        await _read_request(reader)
        writer.write(b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"7\r\n{\"error\r\n9\r\n\": \"bad\"}\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()

    async def scenario(base, state):
        conn = Connection(base, timeout_s=5)
        reply = await conn.post("/v1/search", {"query": ""})
        await conn.close()
        return reply

    reply, _ = asyncio.run(_with_server(handler, scenario))
    assert reply.status_code == 422 and reply.json() == {"error": "bad"} and "bad" in reply.text


def test_a_connection_closed_while_idle_is_reopened_and_the_request_sent_once():
    async def handler(reader, writer, state):
        body = await _read_request(reader)  # one request per connection, then close (a keep-alive timeout)
        state["requests"].append(body)
        writer.write(_answer(b"{}"))
        await writer.drain()

    async def scenario(base, state):
        conn = Connection(base, timeout_s=5)
        first = await conn.post("/a", {"i": 1})
        await asyncio.sleep(0.05)  # the server has closed the connection by now
        second = await conn.post("/a", {"i": 2})
        await conn.close()
        return first, second

    (first, second), state = asyncio.run(_with_server(handler, scenario))
    assert first.status_code == second.status_code == 200
    assert state["connections"] == 2 and state["requests"] == [b'{"i":1}', b'{"i":2}']  # nothing sent twice


def test_no_answer_hang_up_mid_answer_and_timeout_raise_http_error():
    async def mute(reader, writer, state):
        await _read_request(reader)
        await asyncio.sleep(10)

    async def half(reader, writer, state):
        await _read_request(reader)
        state["requests"].append(1)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
        await writer.drain()

    async def timed(base, state):
        with pytest.raises(HTTPError, match="Timeout"):
            await Connection(base, timeout_s=0.3).post("/x", {})

    async def cut(base, state):
        with pytest.raises(HTTPError, match="closed"):
            await Connection(base, timeout_s=5).post("/x", {})

    asyncio.run(_with_server(mute, timed))
    _, state = asyncio.run(_with_server(half, cut))
    assert state["requests"] == [1]  # an answer had begun: not sent again


def test_only_plain_http_and_an_unreachable_port_is_an_http_error():
    with pytest.raises(ValueError, match="plain HTTP"):
        Connection("https://127.0.0.1:1", timeout_s=1)
    from gateway.launcher import free_port

    async def refused():
        with pytest.raises(HTTPError, match="ConnectionRefused|Errno"):
            await Connection(f"http://127.0.0.1:{free_port()}", timeout_s=2).post("/x", {})

    asyncio.run(refused())
