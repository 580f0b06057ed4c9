"""Replaying simulated users against a running gateway over HTTP (POST /v1/search, /v1/feedback/batch).

asyncio with a bounded number of users in flight (one keep-alive connection each: gateway/simulation/http.py); each
user's searches run one after another, as a person's would. The run is bounded in requests (the population) and in
time (`max_seconds`), and only targets loopback addresses. Responses are used only for what a person sees: the
impression id and the ranked doc ids. A search's feedback goes in one POST /v1/feedback/batch, as a page that
buffers its events sends it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from experiments.errors import AbgateError, InputError
from gateway.simulation.http import Connection, HTTPError
from gateway.simulation.users import ClickModel, Judgments, SimulatedUser


@dataclass
class SimulationResult:
    users: int
    users_done: int = 0
    searches: int = 0
    failed_searches: int = 0
    feedback: int = 0
    failed_feedback: int = 0
    clicks: int = 0
    dwells: int = 0
    conversions: int = 0
    seconds: float = 0.0
    stopped: str | None = None       # why the run ended early ("time limit"), None when every user finished
    errors: list[str] = field(default_factory=list)   # the first few, to say what went wrong

    def note_error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()} | {
            "searches_per_s": round(self.searches / self.seconds, 1) if self.seconds else 0.0}


def check_loopback(url: str) -> str:
    """The simulator sends load: it may only target this machine."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "http" or not loopback:
        raise InputError(f"{url!r} is not a gateway on this machine over plain HTTP: use http://127.0.0.1:PORT "
                         "(the simulator sends plain HTTP, to loopback addresses only).", field="--url")
    return url.rstrip("/")



class GatewayUnreachable(AbgateError):
    """Every one of the first searches failed: the gateway is down or refuses the simulator's requests."""


FAIL_FAST_AFTER = 20   # searches that all failed before the run gives up with a message


async def _run_user(client: Connection, user: SimulatedUser, judgments: Judgments, model: ClickModel,
                    seed: int, k: int, result: SimulationResult) -> None:
    from gateway.simulation.users import user_rng

    # A separate stream from the one that built the user, so clicks do not depend on the population size.
    rng = user_rng(seed, 1_000_000_000 + user.index)
    for visit in user.visits:
        for query_id in visit:
            try:
                response = await client.post("/v1/search", {
                    "query": judgments.queries[query_id], "unit_id": user.unit_id, "k": k})
            except HTTPError as exc:
                _search_failed(result, f"POST /v1/search: {exc}")
                continue
            if response.status_code // 100 != 2:
                _search_failed(result, f"POST /v1/search: HTTP {response.status_code}: {response.text[:200]}")
                continue
            result.searches += 1
            body = response.json()
            doc_ids = [hit["doc_id"] for hit in body.get("results", [])]
            events = model.feedback(doc_ids, judgments.qrels[query_id], rng, user.propensity)
            if events:
                await _send_feedback(client, body["impression_id"], events, result)
    result.users_done += 1


def _search_failed(result: SimulationResult, text: str) -> None:
    result.failed_searches += 1
    result.note_error(text)
    if result.searches == 0 and result.failed_searches >= FAIL_FAST_AFTER:
        raise GatewayUnreachable(f"the first {FAIL_FAST_AFTER} searches all failed; first error: "
                                 f"{result.errors[0]}. Is `abgate serve` running at that address?",
                                 field="--url")


async def _send_feedback(client: Connection, impression_id: str, events: list[dict],
                         result: SimulationResult) -> None:
    """One impression's events in one request (POST /v1/feedback/batch), as a page that buffers its clicks
    would send them: about a third of the requests one per event takes."""
    try:
        response = await client.post("/v1/feedback/batch",
                                     {"events": [{"impression_id": impression_id, **e} for e in events]})
        ok = response.status_code // 100 == 2
        if not ok:
            result.note_error(f"POST /v1/feedback/batch: HTTP {response.status_code}: {response.text[:200]}")
    except HTTPError as exc:
        ok = False
        result.note_error(f"POST /v1/feedback/batch: {exc}")
    if not ok:
        result.failed_feedback += len(events)
        return
    result.feedback += len(events)
    for event in events:
        kind = event["type"]
        result.clicks += kind == "click"
        result.dwells += kind == "dwell"
        result.conversions += kind == "conversion"


def run(coroutine):
    """Run a coroutine on uvloop where installed (as the gateway serves with it): a load generator's own event
    loop should cost less than what it loads."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def replay(url: str, judgments: Judgments, users: list[SimulatedUser], *, model: ClickModel, seed: int,
                 k: int = 10, concurrency: int = 8, max_seconds: float = 600.0, timeout_s: float = 30.0,
                 progress: Callable[[SimulationResult], None] | None = None,
                 progress_every_s: float = 2.0) -> SimulationResult:
    """Send every user's searches and feedback; returns the counts. Stops at max_seconds with `stopped` set."""
    base = check_loopback(url)
    if concurrency < 1:
        raise InputError(f"must be at least 1, got {concurrency}.", field="--concurrency")
    result = SimulationResult(users=len(users))
    queue: asyncio.Queue[SimulatedUser] = asyncio.Queue()
    for user in users:
        queue.put_nowait(user)
    started = time.perf_counter()
    connections = [Connection(base, timeout_s) for _ in range(min(concurrency, len(users)))]

    async def worker(client: Connection) -> None:
        while not queue.empty():
            await _run_user(client, queue.get_nowait(), judgments, model, seed, k, result)

    async def report() -> None:
        while True:
            await asyncio.sleep(progress_every_s)
            result.seconds = time.perf_counter() - started
            progress(result)

    reporter = asyncio.create_task(report()) if progress else None
    workers = [asyncio.create_task(worker(c)) for c in connections]
    try:
        done, pending = await asyncio.wait(workers, timeout=max_seconds, return_when=asyncio.FIRST_EXCEPTION)
        if pending:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception():
                raise task.exception()
        if pending and not any(t.exception() for t in done):
            result.stopped = f"time limit of {max_seconds:g} s"
    finally:
        if reporter:
            reporter.cancel()
        for task in workers:
            task.cancel()
        for connection in connections:
            await connection.close()
    result.seconds = time.perf_counter() - started
    return result
