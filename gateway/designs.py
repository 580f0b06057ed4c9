"""Experiment designs beyond A/B on the serving path: interleaving and shadow.

    ab            the unit's arm answers (gateway/service.py)
    interleaving  every arm answers, through the same micro-batchers and query cache; the lists are merged
                  team-draft style (gateway/interleaving.py) with random coin flips whose seed is logged, and
                  an `Interleaving` event records each position's team and every arm's own ranking
    shadow        the control answers; on a sampled share of requests the candidate arms run afterwards, off
                  the request path, in a bounded queue (drops counted), logged as `ShadowResult` events

Shadow work yields to users: the worker takes a job only while the micro-batchers have no user query
waiting (it waits a few milliseconds otherwise), so on a machine with a spare core shadow load costs the users
little, and on a saturated one shadow jobs wait, then drop (counted) rather than slow a user's search.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import structlog

from gateway.batcher import BatcherClosed
from gateway.eventlog.events import Interleaving, ShadowResult, utcnow
from gateway.interleaving import interleave, seed_of
from gateway.search import Hit

log = structlog.get_logger("abgate.designs")
INTERLEAVED_ARM = "interleaved"   # the arm name logged for an interleaved impression
FILTER_OVERSAMPLE = 10            # with filters, search k * 10 (at least 100) rows, then keep the k that match


def design_of(experiment) -> str:
    """ab | interleaving | shadow (experiments/schema.py's design.type; ab when there is no experiment)."""
    if experiment is None:
        return "ab"
    return getattr(getattr(experiment, "design", None), "type", None) or "ab"


def sampled(impression_id: str, share: float) -> bool:
    """A deterministic draw from the impression id: the same impression is always in or out."""
    return seed_of(impression_id) / 2.0 ** 64 < share


async def ranked(arm_rt, query: str, k: int, filters: dict | None) -> list[Hit]:
    """One arm's top k for the query: encode + FAISS in its micro-batcher, then filters and score threshold."""
    k_search = max(k * FILTER_OVERSAMPLE, 100) if filters else k
    hits = await arm_rt.batcher.search(query, arm_rt.index, k_search)
    if filters:
        hits = [h for h in hits if all(h.metadata.get(f) == v for f, v in filters.items())]
    threshold = arm_rt.arm.score_threshold
    if threshold is not None:
        hits = [h for h in hits if h.score >= threshold]
    return [Hit(h.doc_id, h.score, position, h.metadata) for position, h in enumerate(hits[:k], 1)]


@dataclass(frozen=True)
class PendingInterleaving:
    """An interleaving waiting for the id the impression gets once its list is known (the id is signed over it)."""
    experiment: str
    unit_id: str
    arms: list[str]
    teams: list[int]
    rankings: list[list[str]]
    seed: int

    def logged(self, impression_id: str) -> Interleaving:
        return Interleaving(impression_id, utcnow(), self.experiment, self.unit_id, self.arms, self.teams,
                            self.rankings, self.seed)


async def interleaved(runtime, experiment, unit_id: str, query: str, k: int | None,
                      filters: dict | None) -> tuple[list[Hit], PendingInterleaving, str, str]:
    """Every arm's ranking (control first), merged: the hits shown, the event to log, and the arms'
    encoder and index checksums joined in arm order (the impression's record of what served it). The coin
    flips' seed is random and logged with the event, which replays the merge exactly."""
    arms = sorted(experiment.arms, key=lambda a: a.name != experiment.control)
    runtimes = [runtime.arm_runtime(arm) for arm in arms]
    k = k or experiment.control_arm.top_k
    rankings = await asyncio.gather(*(ranked(rt, query, k, filters) for rt in runtimes))
    merged = interleave([[h.doc_id for h in r] for r in rankings], k, secrets.randbits(63))
    by_doc = [{h.doc_id: h for h in r} for r in rankings]
    hits = [Hit(doc, by_doc[team][doc].score, position, by_doc[team][doc].metadata)
            for position, (doc, team) in enumerate(zip(merged.doc_ids, merged.teams), 1)]
    pending = PendingInterleaving(experiment.name, unit_id, [a.name for a in arms], list(merged.teams),
                                  [[h.doc_id for h in r] for r in rankings], merged.seed)
    return (hits, pending, ",".join(rt.encoder.checksum for rt in runtimes),
            ",".join(rt.index.checksum for rt in runtimes))


class ShadowRunner:
    """A bounded queue of shadow jobs and one worker that runs them when the batchers are idle."""

    def __init__(self, submit: Callable, busy: Callable[[], int], *, capacity: int = 1024,
                 max_wait_s: float = 2.0, on_outcome: Callable[[str], None] | None = None) -> None:
        self.submit = submit                # EventSink.submit
        self.busy = busy                    # user queries waiting in the micro-batchers (Runtime.queue_depth)
        self.queue: asyncio.Queue | None = None
        self.capacity = capacity
        self.max_wait_s = max_wait_s
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.counts = {"queued": 0, "done": 0, "errors": 0, "dropped": 0}
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue(self.capacity)
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def offer(self, job: Callable[[], Awaitable[None]]) -> bool:
        if self.queue is None:
            return False
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self._count("dropped")
            return False
        self._count("queued")
        return True

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        self.on_outcome(outcome)

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            deadline = time.monotonic() + self.max_wait_s
            while self.busy() > 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # users first: wait for the batchers to drain
            if self.busy() > 0:
                self._count("dropped")
                continue
            try:
                await job()
                self._count("done")
            except Exception as exc:  # a shadow failure never reaches a user; it is logged and counted
                self._count("errors")
                log.warning("shadow job failed", error=str(exc))

    def job(self, runtime, experiment, impression_id: str, unit_id: str, query: str, k: int,
            filters: dict | None) -> Callable[[], Awaitable[None]]:
        """The candidate arms' search for a served impression, logged as ShadowResult events."""
        async def run() -> None:
            for arm in experiment.arms:
                if arm.name == experiment.control:
                    continue
                started = time.perf_counter()
                error, hits = "", []
                try:
                    hits = await ranked(runtime.arm_runtime(arm), query, k, filters)
                except (BatcherClosed, KeyError) as exc:
                    error = f"{type(exc).__name__}: the arm was unloaded by a reload"
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                latency = round((time.perf_counter() - started) * 1000, 3)
                self.submit(ShadowResult(impression_id, utcnow(), experiment.name, arm.name, unit_id,
                                         [h.doc_id for h in hits], [h.score for h in hits], latency, error))
                if error:
                    raise RuntimeError(error)
        return run
