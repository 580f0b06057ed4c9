"""Micro-batching: concurrent queries for one encoder become one ONNX call, then one FAISS search per index.

Why: ONNX Runtime and FAISS cost little more for 32 rows than for one, so a gateway that ran each request
alone would spend most of its CPU on per-call overhead. Requests put (query, index, k, future) on an asyncio
queue; a collector task takes whatever is queued, waits at most `max_wait_ms` for more (up to `max_batch`),
and hands the batch to a worker thread (tokenize + infer + pool, then `VectorIndex.search` per index). The
event loop never runs model or index code. While a batch runs, new requests queue up, so under load batches
fill without waiting; at low load a request waits at most `max_wait_ms` (default 0: it never waits, which
measured best on CPU at every concurrency; see docs/gateway.md "Benchmarks").

`workers` batches of one encoder may run at once (threads in the shared executor); ONNX Runtime sessions and
FAISS searches are thread-safe. A batch takes at most its fair share of the requests in flight (queued plus
running, divided by `workers`), so parallel workers get batches of similar length.

With a `QueryCache` (gateway/query_cache.py; `--query-cache N`), queries already encoded by this encoder skip
ONNX: only the batch's new texts are encoded.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable

from gateway.search import Hit


@dataclass
class _Item:
    query: str
    index: object          # gateway.search.VectorIndex
    k: int
    future: asyncio.Future


class BatcherClosed(RuntimeError):
    pass


class MicroBatcher:
    def __init__(self, encoder, executor: Executor, *, max_batch: int = 32, max_wait_ms: float = 0.0,
                 workers: int = 2, on_batch: Callable[[int], None] | None = None, cache=None) -> None:
        self.encoder = encoder
        self.cache = cache      # gateway.query_cache.QueryCache, or None
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self._executor = executor
        self._on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._slots = asyncio.Semaphore(workers)
        self.workers = workers
        self._running_items = 0
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def search(self, query: str, index, k: int) -> list[Hit]:
        """The top-k hits for one query; batched with whatever else arrives meanwhile."""
        if self._closed:
            raise BatcherClosed("this encoder was unloaded by a reload; retry the request")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect(), name="abgate-batcher")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(query, index, k, future))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait
            # Fair share: at most 1/workers of the requests in flight (queued + running). Without it a
            # worker that frees up takes the whole queue into one long single-threaded batch while the other
            # worker soon idles, and whoever queued behind it waits twice (p99 at concurrency 8: 110-121 ms
            # greedy, 82-86 ms fair share, throughput unchanged or better; docs/gateway.md "Benchmarks").
            while len(batch) < self._limit(len(batch)):
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            self._running_items += len(batch)
            task = loop.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _limit(self, taken: int) -> int:
        """The most this batch may hold now: max_batch, or with several workers its fair share of the requests
        in flight (growing while it waits for `max_wait_ms`, as more arrive)."""
        if self.workers == 1:
            return self.max_batch
        in_flight = self._queue.qsize() + taken + self._running_items
        return min(self.max_batch, -(-in_flight // self.workers))

    async def _run(self, batch: list[_Item]) -> None:
        try:
            self._on_batch(len(batch))
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self._work, batch)
        except BaseException as exc:  # the requests waiting on this batch must learn why, not hang
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
            if not isinstance(exc, Exception):
                raise
        else:
            for item, hits in zip(batch, results):
                if not item.future.done():
                    item.future.set_result(hits)
        finally:
            self._running_items -= len(batch)
            self._slots.release()

    def _work(self, batch: list[_Item]) -> list[list[Hit]]:
        """In a worker thread: one encode for the whole batch, one search per distinct index."""
        queries = [item.query for item in batch]
        vectors = (self.cache.encode(self.encoder, queries) if self.cache is not None
                   else self.encoder.encode(queries, batch_size=len(batch)))
        results: list[list[Hit]] = [[] for _ in batch]
        groups: dict[int, list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault(id(item.index), []).append(i)
        for rows in groups.values():
            index = batch[rows[0]].index
            k = max(batch[i].k for i in rows)
            for i, hits in zip(rows, index.search(vectors[rows], k)):
                results[i] = hits[: batch[i].k]
        return results

    async def close(self) -> None:
        """Stop taking requests, finish the queued ones, then stop the collector."""
        self._closed = True
        while not self._queue.empty() or self._running:
            await asyncio.sleep(0.005)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
