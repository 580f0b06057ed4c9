"""`abgate eval-offline`: NDCG@k, Recall@k and MRR@k of an encoder + index on held-out qrels.

The metrics follow trec_eval / pytrec_eval (what BEIR and MTEB report), so figures compare with published
ones: gain = the judged grade (grades <= 0 are not relevant), discount log2(rank + 1), ideal DCG over the
judged grades; Recall@k = relevant found in the top k / relevant judged; MRR@k = 1 / rank of the first
relevant document within k (0 if none). Queries without a relevant judgment are not scored.

Results (aggregate and per query) go to the JSON result and, unless told otherwise, to the ClickHouse tables
`offline_eval` and `offline_eval_queries`, tagged with the encoder and index checksums, so reports can set
the offline figure beside the online one.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

from exporters.progress import Progress
from exporters.corpus import Qrels, qrels_file, read_qrels, read_queries
from gateway.encoder import Encoder
from experiments.errors import InputError
from gateway.search import VectorIndex

METRICS = ("ndcg", "recall", "mrr")
DEFAULT_CUTOFFS = {"ndcg": (10,), "recall": (100,), "mrr": (10,)}


def ndcg_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    dcg = sum(judged.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]) if judged.get(d, 0) > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    relevant = {d for d, g in judged.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def mrr_at(ranked: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if judged.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


METRIC_FUNCTIONS = {"ndcg": ndcg_at, "recall": recall_at, "mrr": mrr_at}


def cutoffs_for(ks: Sequence[int] | None) -> list[tuple[str, int]]:
    """The default trio (NDCG@10, Recall@100, MRR@10) plus every metric at each extra k asked for."""
    pairs = {(m, k) for m, ks_ in DEFAULT_CUTOFFS.items() for k in ks_}
    for k in ks or ():
        if k < 1:
            raise InputError(f"every k must be at least 1, got {k}.", field="k")
        pairs |= {(m, k) for m in METRICS}
    return sorted(pairs, key=lambda p: (METRICS.index(p[0]), p[1]))


def score_rankings(rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]],
                   cutoffs: Sequence[tuple[str, int]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(means per 'metric@k', per-query values) over the queries that have a relevant judgment."""
    per_query: dict[str, dict[str, float]] = {}
    for qid, judged in qrels.items():
        if not any(g > 0 for g in judged.values()):
            continue
        ranked = rankings.get(qid, [])
        per_query[qid] = {f"{m}@{k}": METRIC_FUNCTIONS[m](ranked, judged, k) for m, k in cutoffs}
    n = len(per_query)
    means = {f"{m}@{k}": (sum(v[f"{m}@{k}"] for v in per_query.values()) / n if n else 0.0) for m, k in cutoffs}
    return means, per_query


@dataclass
class EvalResult:
    run_id: str
    ts: datetime
    encoder_checksum: str
    index_checksum: str
    label: str
    dataset: str
    split: str
    queries: int
    metrics: dict[str, float]
    per_query: dict[str, dict[str, float]]
    rankings: dict[str, list[tuple[str, float]]]
    seconds: float
    dropped_judgments: int = 0  # with ignore_unknown_docs: judgments naming documents the index lacks

    def to_json(self, per_query: bool = True) -> dict:
        out = {"run_id": self.run_id, "ts": self.ts.isoformat(), "encoder_checksum": self.encoder_checksum,
               "index_checksum": self.index_checksum, "label": self.label, "dataset": self.dataset,
               "split": self.split, "queries": self.queries, "metrics": self.metrics,
               "seconds": round(self.seconds, 2), "dropped_judgments": self.dropped_judgments}
        if per_query:
            out["per_query"] = {q: {**m, "top": [d for d, _ in self.rankings.get(q, [])[:10]]}
                                for q, m in self.per_query.items()}
        return out


def check_qrels(qrels: Qrels, queries: Mapping[str, str], index: VectorIndex) -> None:
    """Judgments must name documents the index holds and queries the queries file holds, else scores lie."""
    known = set(index.doc_ids)
    for (qid, did), line in sorted(qrels.lines.items(), key=lambda item: item[1]):
        if did not in known:
            unknown = sum(1 for (_, d) in qrels.lines if d not in known)
            raise InputError(f"the qrels name document {did!r}, which the index does not hold ({unknown} "
                             "judgment(s) name unknown documents). Evaluate against an index of the same corpus, "
                             "or pass --ignore-unknown-docs to drop those judgments.",
                             file=qrels.path, line=line, field="corpus-id")
        if qid not in queries:
            raise InputError(f"the qrels name query {qid!r}, which the queries file does not hold.",
                             file=qrels.path, line=line, field="query-id")


def drop_unknown_docs(qrels: Qrels, index: VectorIndex) -> tuple[Qrels, int]:
    known = set(index.doc_ids)
    kept = {q: {d: g for d, g in j.items() if d in known} for q, j in qrels.judgments.items()}
    lines = {key: line for key, line in qrels.lines.items() if key[1] in known}
    return Qrels(qrels.path, {q: j for q, j in kept.items() if j}, lines), len(qrels.lines) - len(lines)


def evaluate(encoder: Encoder, index: VectorIndex, data_dir: str | Path, *, split: str = "test",
             ks: Sequence[int] | None = None, label: str = "", batch_size: int = 32,
             ignore_unknown_docs: bool = False, query_ids: Sequence[str] | None = None,
             progress: bool = True) -> EvalResult:
    """Encodes the split's queries, searches, scores. `query_ids` restricts the run to a subset."""
    if index.encoder_checksum != encoder.checksum:
        raise InputError(f"the index was built by encoder {index.encoder_checksum[:16]}, not by this one "
                         f"({encoder.checksum[:16]}); evaluate an encoder with its own index.",
                         field="encoder_checksum")
    started = time.monotonic()
    data_dir = Path(data_dir)
    queries = read_queries(data_dir)
    qrels = read_qrels(qrels_file(data_dir, split))
    if query_ids is not None:
        wanted = set(query_ids)
        qrels = Qrels(qrels.path, {q: j for q, j in qrels.judgments.items() if q in wanted},
                      {key: line for key, line in qrels.lines.items() if key[0] in wanted})
    dropped = 0
    if ignore_unknown_docs:
        qrels, dropped = drop_unknown_docs(qrels, index)
    check_qrels(qrels, queries, index)
    cutoffs = cutoffs_for(ks)
    depth = max(k for _, k in cutoffs)
    qids = [q for q in qrels.judgments if any(g > 0 for g in qrels.judgments[q].values())]
    if not qids:
        raise InputError("no query in this split has a relevant judgment.", file=qrels.path)
    vectors = encoder.encode([queries[q] for q in qids], batch_size=batch_size,
                             progress=Progress("encoded queries", enabled=progress))
    hits = index.search(vectors, depth)
    rankings = {q: [(h.doc_id, h.score) for h in hs] for q, hs in zip(qids, hits)}
    means, per_query = score_rankings({q: [d for d, _ in r] for q, r in rankings.items()}, qrels.judgments,
                                      cutoffs)
    return EvalResult(run_id=uuid.uuid4().hex, ts=datetime.now(timezone.utc), encoder_checksum=encoder.checksum,
                      index_checksum=index.checksum, label=label, dataset=data_dir.name, split=split,
                      queries=len(per_query), metrics=means, per_query=per_query, rankings=rankings,
                      seconds=time.monotonic() - started, dropped_judgments=dropped)


def store_result(client, result: EvalResult) -> dict:
    """Inserts the run into offline_eval (one row per metric@k) and offline_eval_queries (per query)."""
    from gateway.eventlog.tables import migrate

    migrate(client)
    rows = []
    for name, value in result.metrics.items():
        metric, k = name.split("@")
        rows.append([result.run_id, result.ts, result.encoder_checksum, result.index_checksum, result.label,
                     result.dataset, result.split, metric, int(k), float(value), result.queries])
    client.insert("offline_eval", rows, column_names=["run_id", "ts", "encoder_checksum", "index_checksum",
                                                      "label", "dataset", "split", "metric", "k", "value",
                                                      "queries"])
    query_rows = []
    for qid, values in result.per_query.items():
        for name, value in values.items():
            metric, k = name.split("@")
            query_rows.append([result.run_id, result.ts, result.encoder_checksum, result.index_checksum,
                               result.dataset, result.split, qid, metric, int(k), float(value)])
    client.insert("offline_eval_queries", query_rows,
                  column_names=["run_id", "ts", "encoder_checksum", "index_checksum", "dataset", "split",
                                "query_id", "metric", "k", "value"])
    return {"offline_eval": len(rows), "offline_eval_queries": len(query_rows)}
