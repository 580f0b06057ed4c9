"""Hard-negative mining for the second fine-tuning pass.

The pass-1 model encodes the pool and the training queries; for each (query, positive) pair the negative is
drawn (seeded) from the query's top `top_k` neighbours, minus every document known to be relevant to that
query, minus the first `skip_top` ranks. Two guards against false negatives, which poison contrastive
training on small judged sets like SciFact (most near-duplicates of a positive are unjudged, not irrelevant):
the top ranks are skipped, and a candidate scoring above `margin` x the positive's score is dropped
(NV-Retriever's "TopK-PercPos" rule, Moreira et al. 2024).

`select_negatives` is pure numpy; `mine` only adds encoding, through any object with sentence-transformers'
`encode(texts, ...)` (the pass-1 model), so this module never imports torch itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from exporters.pairs import TrainingSet
from exporters.progress import Progress


@dataclass(frozen=True)
class MiningSettings:
    top_k: int = 30
    skip_top: int = 3
    margin: float = 0.95        # drop candidates scoring above margin * positive score; <= 0 disables
    batch_size: int = 64
    max_length: int | None = 64    # mining only ranks: shorter texts save CPU (a corpus encode > an epoch)


@dataclass
class Mined:
    negatives: list[str | None]     # one per pair, None where no candidate survived the rules
    stats: dict
    doc_ids: list[str]              # row order of the embeddings below, kept for a cheap pass-1 evaluation
    doc_embeddings: np.ndarray


def encode(model, texts: list[str], batch_size: int, label: str) -> np.ndarray:
    """Normalised embeddings, encoded in chunks so long runs show progress on stderr."""
    chunks, step = [], max(batch_size * 8, 1)
    meter = Progress(f"encoding {label}", prefix="abgate finetune")
    for start in range(0, len(texts), step):
        chunks.append(model.encode(texts[start:start + step], batch_size=batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False))
        meter(min(start + step, len(texts)), len(texts))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, 0), np.float32)


def select_negatives(scores: np.ndarray, positive_scores: np.ndarray, excluded: list[set[int]],
                     settings: MiningSettings, rng: random.Random) -> list[int | None]:
    """For each row of `scores` (pairs x pool), one pool index drawn from the allowed candidates, or None.

    Candidates: ranks skip_top+1 .. top_k of the row, minus `excluded[row]` (known positives), minus
    anything scoring above margin * positive_scores[row].
    """
    k = min(settings.top_k, scores.shape[1])
    if k <= 0:
        return [None] * scores.shape[0]
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    chosen: list[int | None] = []
    for row, candidates in enumerate(top):
        # argpartition leaves the top k unordered; rank them (ties by index keep it deterministic)
        ranked = sorted(candidates.tolist(), key=lambda j: (-scores[row, j], j))
        allowed = [j for j in ranked if j not in excluded[row]][settings.skip_top:]
        if settings.margin > 0:
            ceiling = settings.margin * positive_scores[row]
            allowed = [j for j in allowed if scores[row, j] <= ceiling]
        chosen.append(rng.choice(allowed) if allowed else None)
    return chosen


def mine(model, data: TrainingSet, settings: MiningSettings, seed: int) -> Mined:
    doc_ids = list(data.documents)
    row_of = {doc_id: row for row, doc_id in enumerate(doc_ids)}
    query_ids = sorted({pair.query_id for pair in data.pairs})
    query_row = {query_id: row for row, query_id in enumerate(query_ids)}
    doc_embeddings = encode(model, [data.documents[d] for d in doc_ids], settings.batch_size, "pool")
    query_embeddings = encode(model, [data.queries[q] for q in query_ids], settings.batch_size, "queries")

    pair_queries = np.array([query_row[p.query_id] for p in data.pairs], dtype=np.int64)
    scores = query_embeddings[pair_queries] @ doc_embeddings.T
    positive_scores = np.array([scores[i, row_of[p.positive_id]] for i, p in enumerate(data.pairs)])
    excluded = [{row_of[d] for d in data.positives.get(p.query_id, ()) if d in row_of} for p in data.pairs]
    chosen = select_negatives(scores, positive_scores, excluded, settings, random.Random(seed))

    negatives = [doc_ids[j] if j is not None else None for j in chosen]
    found = [i for i, j in enumerate(chosen) if j is not None]
    stats = {
        "pairs": len(data.pairs),
        "with_negative": len(found),
        "pool": len(doc_ids),
        "mean_positive_score": round(float(positive_scores.mean()), 4),
        "mean_negative_score": round(float(np.mean([scores[i, chosen[i]] for i in found])), 4) if found else None,
        # how often the positive is already the top hit: a sanity check on the pass-1 model
        "positive_at_rank_1": round(float(np.mean(scores.argmax(axis=1) == np.array(
            [row_of[p.positive_id] for p in data.pairs]))), 4),
    }
    return Mined(negatives=negatives, stats=stats, doc_ids=doc_ids, doc_embeddings=doc_embeddings)


def ndcg_at_k(scores: np.ndarray, query_ids: list[str], doc_ids: list[str],
              qrels: dict[str, dict[str, float]], k: int = 10) -> float:
    """Mean NDCG@k (linear gain, as pytrec_eval) of exact search: used for the optional per-pass figures."""
    total = 0.0
    for row, query_id in enumerate(query_ids):
        top = np.argpartition(-scores[row], min(k, scores.shape[1] - 1))[:k]
        top = sorted(top.tolist(), key=lambda j: (-scores[row, j], j))
        judged = qrels.get(query_id, {})
        dcg = sum(judged.get(doc_ids[j], 0.0) / np.log2(rank + 2) for rank, j in enumerate(top))
        ideal = sum(g / np.log2(rank + 2) for rank, g in enumerate(sorted(judged.values(), reverse=True)[:k]))
        total += dcg / ideal if ideal > 0 else 0.0
    return total / len(query_ids) if query_ids else 0.0
