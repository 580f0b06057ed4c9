"""The micro-batcher, the impression cache and the settings, in process: the real encoder and FAISS index."""

from __future__ import annotations

import asyncio

import pytest

QUERIES = ["0-dimensional biomaterials show inductive properties.",
           "ALDH1 expression is associated with poorer prognosis for breast cancer primary tumors.",
           "Vitamin D deficiency is linked to tuberculosis."]

pytestmark = pytest.mark.slow


def test_micro_batcher_groups_concurrent_queries_and_matches_direct_search(baseline_encoder, gateway_artifacts):
    from concurrent.futures import ThreadPoolExecutor

    from gateway.batcher import MicroBatcher
    from gateway.search import VectorIndex

    _, flat_dir, hnsw_dir = gateway_artifacts
    flat, hnsw = VectorIndex.load(flat_dir, gpu=False), VectorIndex.load(hnsw_dir, gpu=False)
    queries = [f"{QUERIES[i % 3]} variant {i}" for i in range(40)]
    sizes: list[int] = []

    async def run():
        with ThreadPoolExecutor(2) as pool:
            batcher = MicroBatcher(baseline_encoder, pool, max_batch=16, max_wait_ms=20, on_batch=sizes.append)
            out = await asyncio.gather(*(batcher.search(q, flat if i % 2 else hnsw, 3 + i % 5)
                                         for i, q in enumerate(queries)))
            await batcher.close()
            return out

    results = asyncio.run(run())
    assert sum(sizes) == 40 and max(sizes) <= 16 and len(sizes) < 40
    vectors = baseline_encoder.encode(queries)
    for i, hits in enumerate(results):
        index = flat if i % 2 else hnsw
        expected = index.search(vectors[i:i + 1], 3 + i % 5)[0]
        assert [h.doc_id for h in hits] == [h.doc_id for h in expected]


def test_micro_batcher_splits_the_work_fairly_between_workers(baseline_encoder, gateway_artifacts):
    """Two workers and eight queued queries: two batches of four, not one of eight (gateway/batcher.py)."""
    from concurrent.futures import ThreadPoolExecutor

    from gateway.batcher import MicroBatcher
    from gateway.search import VectorIndex

    flat = VectorIndex.load(gateway_artifacts[1], gpu=False)
    for workers, expected in ((2, [4, 4]), (1, [8])):
        sizes: list[int] = []

        async def run():
            with ThreadPoolExecutor(2) as pool:
                batcher = MicroBatcher(baseline_encoder, pool, max_batch=32, workers=workers, on_batch=sizes.append)
                await asyncio.gather(*(batcher.search(f"{QUERIES[i % 3]} {i}", flat, 3) for i in range(8)))
                await batcher.close()

        asyncio.run(run())
        assert sizes == expected, (workers, sizes)


def test_settings_from_environment_and_flags():
    from experiments.errors import InputError
    from gateway.settings import Settings

    s = Settings.from_env({"ABGATE_MAX_BATCH": "8", "ABGATE_LOG_EVENTS": "false"}, max_wait_ms=5.0, port=None)
    assert (s.max_batch, s.log_events, s.max_wait_ms, s.port) == (8, False, 5.0, 8000)
    with pytest.raises(InputError, match="ABGATE_MAX_BATCH"):
        Settings.from_env({"ABGATE_MAX_BATCH": "0"})
    with pytest.raises(InputError, match="not a valid int"):
        Settings.from_env({"ABGATE_PORT": "http"})
