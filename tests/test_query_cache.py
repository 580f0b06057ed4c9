"""The query-embedding cache: same results as without it (real encoder, real FAISS index, real micro-batcher),
LRU eviction, hit counting, and the counters in /metrics."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from experiments.errors import InputError

from gateway.batcher import MicroBatcher
from gateway.prometheus import GatewayMetrics
from gateway.query_cache import QueryCache
from gateway.runtime import Runtime
from gateway.search import VectorIndex
from gateway.settings import Settings


def _queries(scifact_dir: Path, n: int) -> list[str]:
    with open(scifact_dir / "queries.jsonl") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


async def _search_all(batcher: MicroBatcher, index, queries: list[str]) -> list[list[tuple[str, float]]]:
    hits = await asyncio.gather(*(batcher.search(q, index, 10) for q in queries))
    out = [[(h.doc_id, h.score) for h in row] for row in hits]
    await batcher.close()
    return out


def test_results_with_cache_equal_results_without(baseline_encoder, small_index_dir, scifact_dir):
    index = VectorIndex.load(small_index_dir, encoder_checksum=baseline_encoder.checksum, gpu=False)
    distinct = _queries(scifact_dir, 12)
    stream = distinct + distinct[:6] + distinct[::-1]     # repeats, within a batch and across batches
    with ThreadPoolExecutor(2) as pool:
        plain = asyncio.run(_search_all(MicroBatcher(baseline_encoder, pool, max_batch=8), index, stream))
        cache = QueryCache(100)
        cached = asyncio.run(_search_all(MicroBatcher(baseline_encoder, pool, max_batch=8, cache=cache),
                                         index, stream))
    for a, b in zip(plain, cached):
        assert [d for d, _ in a] == [d for d, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-4)
    stats = cache.stats()
    assert stats["size"] == len(distinct)
    assert stats["hits"] + stats["misses"] == len(stream)
    assert stats["hits"] >= len(stream) - 2 * len(distinct)  # a text can miss twice only within one batch
    # A cached vector is the encoder's own vector for that text.
    vector = cache.get(QueryCache.key(baseline_encoder, distinct[0]))
    assert np.allclose(vector, baseline_encoder.encode([distinct[0]])[0], atol=1e-5)
    assert not vector.flags.writeable


def test_lru_eviction_and_counts(baseline_encoder, scifact_dir):
    queries = _queries(scifact_dir, 4)
    cache = QueryCache(2)
    cache.encode(baseline_encoder, queries[:2])          # 2 misses
    assert cache.stats() | {} == {"hits": 0, "misses": 2, "size": 2, "capacity": 2}
    cache.encode(baseline_encoder, [queries[0]])          # hit: queries[0] is now the most recent
    cache.encode(baseline_encoder, [queries[2]])          # miss: evicts queries[1], the least recent
    key = lambda q: QueryCache.key(baseline_encoder, q)  # noqa: E731
    assert cache.get(key(queries[1])) is None
    assert cache.get(key(queries[0])) is not None and cache.get(key(queries[2])) is not None
    assert cache.stats() == {"hits": 3, "misses": 4, "size": 2, "capacity": 2}
    # Another encoder (checksum) or dimension is another key.
    assert key(queries[0]) != ("other-checksum", baseline_encoder.dimension, queries[0])
    off = QueryCache(0)
    off.encode(baseline_encoder, queries[:2])
    assert off.stats()["size"] == 0
    with pytest.raises(ValueError):
        QueryCache(-1)


def test_counters_in_metrics(baseline_encoder, scifact_dir):
    runtime = Runtime(Settings(query_cache=8, state_file=None))  # no pool or state file until start()
    queries = _queries(scifact_dir, 3)
    runtime.query_cache.encode(baseline_encoder, queries)
    runtime.query_cache.encode(baseline_encoder, queries[:1])
    metrics = GatewayMetrics()
    metrics.watch(lambda: {}, runtime.queue_depth, runtime.query_cache_stats)
    text = metrics.render().decode()
    assert "abgate_query_cache_hits_total 1.0" in text
    assert "abgate_query_cache_misses_total 3.0" in text
    assert "abgate_query_cache_entries 3.0" in text
    off = Runtime(Settings(state_file=None))
    metrics = GatewayMetrics()
    metrics.watch(lambda: {}, off.queue_depth, off.query_cache_stats)
    assert off.query_cache is None and "abgate_query_cache" not in metrics.render().decode()
    with pytest.raises(InputError, match="query_cache"):
        Settings(query_cache=-1).validated()
