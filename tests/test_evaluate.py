"""Offline metrics: pinned numbers, then a real run (real model, FAISS, SciFact subset) stored in chdb."""

from __future__ import annotations

import json

import numpy as np
import pytest

from exporters.evaluate import cutoffs_for, evaluate, mrr_at, ndcg_at, recall_at, score_rankings
from gateway.eventlog import store
from gateway.cli import main
from gateway.search import VectorIndex


def test_metrics_pinned_values():
    ranked, judged = ["a", "b", "c", "d"], {"b": 1, "d": 2, "x": 0}
    assert ndcg_at(ranked, judged, 3) == pytest.approx(0.2398125, abs=1e-6)
    assert ndcg_at(["d", "b"], judged, 10) == pytest.approx(1.0)
    assert recall_at(ranked, judged, 3) == 0.5 and recall_at(ranked, judged, 4) == 1.0
    assert mrr_at(ranked, judged, 3) == 0.5 and mrr_at(ranked, judged, 1) == 0.0
    assert ndcg_at([], judged, 10) == 0.0


def test_cutoffs_and_queries_without_relevant_docs():
    assert cutoffs_for(None) == [("ndcg", 10), ("recall", 100), ("mrr", 10)]
    assert ("recall", 5) in cutoffs_for([5]) and ("ndcg", 5) in cutoffs_for([5])
    means, per_query = score_rankings({"q1": ["a"], "q2": ["b"]}, {"q1": {"a": 1}, "q2": {"c": 0}},
                                      [("mrr", 10)])
    assert per_query == {"q1": {"mrr@10": 1.0}} and means == {"mrr@10": 1.0}


def test_real_run_on_scifact_subset(baseline_encoder, small_index_dir, scifact_dir, scifact_subset):
    _, query_ids = scifact_subset
    index = VectorIndex.load(small_index_dir, encoder_checksum=baseline_encoder.checksum)
    result = evaluate(baseline_encoder, index, scifact_dir, query_ids=query_ids, ks=[1], progress=False)
    assert result.queries == 50 and result.index_checksum == index.checksum
    m = result.metrics
    # 500 documents instead of 5,183: easier than the full benchmark (0.645), far better than chance
    assert 0.6 < m["ndcg@10"] <= 1.0 and m["recall@100"] >= m["recall@1"] and m["mrr@10"] >= m["mrr@1"]
    # FAISS's ranking equals brute-force cosine ranking over the same vectors
    from exporters.corpus import read_queries

    queries = read_queries(scifact_dir)
    docs, _ = scifact_subset
    doc_vectors = index.vectors()
    assert index.doc_ids == [d.id for d in docs]
    for qid in query_ids[:5]:
        scores = doc_vectors @ baseline_encoder.encode([queries[qid]])[0]
        top = [docs[i].id for i in np.argsort(-scores)[:10]]
        assert [d for d, _ in result.rankings[qid][:10]] == top


def test_cli_stores_run_in_clickhouse(baseline_encoder_dir, small_index_dir, scifact_dir, tmp_path, capsys):
    dsn = f"chdb://{tmp_path / 'store'}"
    # the subset index lacks most SciFact docs, so judgments naming them are dropped on request
    code = main(["eval-offline", str(baseline_encoder_dir), str(small_index_dir), "--data", str(scifact_dir),
                 "--dsn", dsn, "--ignore-unknown-docs", "--label", "baseline", "--k", "5", "--json",
                 "--output", str(tmp_path / "result.json")])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["stored"]["offline_eval"] == 6
    assert out["dropped_judgments"] > 0 and out["label"] == "baseline"
    assert set(out["metrics"]) == {"ndcg@5", "ndcg@10", "recall@5", "recall@100", "mrr@5", "mrr@10"}
    saved = json.loads((tmp_path / "result.json").read_text())
    assert len(saved["per_query"]) == out["queries"] > 0
    with store.connect(dsn) as client:
        rows = client.query("SELECT metric, k, value, queries, label, encoder_checksum FROM offline_eval "
                            "WHERE run_id = {r:String} ORDER BY metric, k", parameters={"r": out["run_id"]})
        stored = {(r[0], r[1]): r for r in rows.result_rows}
        assert stored[("ndcg", 10)][2] == pytest.approx(out["metrics"]["ndcg@10"])
        assert stored[("ndcg", 10)][3] == out["queries"] and stored[("ndcg", 10)][4] == "baseline"
        assert stored[("ndcg", 10)][5] == out["encoder_checksum"]
        per_query = client.query("SELECT avg(value), count() FROM offline_eval_queries WHERE run_id = {r:String} "
                                 "AND metric = 'ndcg' AND k = 10", parameters={"r": out["run_id"]}).result_rows[0]
        assert per_query[0] == pytest.approx(out["metrics"]["ndcg@10"]) and per_query[1] == out["queries"]


def test_cli_qrels_naming_unknown_documents(baseline_encoder_dir, small_index_dir, scifact_dir, capsys):
    code = main(["eval-offline", str(baseline_encoder_dir), str(small_index_dir), "--data", str(scifact_dir),
                 "--no-store"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith(f"abgate: error: {scifact_dir / 'qrels' / 'test.tsv'}:")
    assert "which the index does not hold" in err and "--ignore-unknown-docs" in err
