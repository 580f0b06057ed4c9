"""FAISS indexes over real SciFact vectors: exact, HNSW, IVF-PQ, persistence and encoder checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gateway.cli import main
from experiments.errors import ArtifactError, InputError
from gateway.search import Hit, VectorIndex


@pytest.fixture(scope="module")
def subset_vectors(small_index_dir, scifact_subset):
    """The subset's vectors as the small index stores them (encoding 500 docs again would cost minutes)."""
    docs, _ = scifact_subset
    return docs, VectorIndex.load(small_index_dir).vectors()


def test_small_index_manifest_and_self_retrieval(small_index_dir, baseline_encoder, scifact_subset):
    docs, _ = scifact_subset
    index = VectorIndex.load(small_index_dir, encoder_checksum=baseline_encoder.checksum)
    assert len(index) == len(docs) == 500 and index.kind == "flat-ip" and index.dimension == 384
    manifest = json.loads((small_index_dir / "abgate-index.json").read_text())
    assert manifest["encoder_checksum"] == baseline_encoder.checksum and manifest["count"] == 500
    # a document's own text finds itself first, with cosine ~1
    hits = index.search(baseline_encoder.encode([docs[7].text]), k=5)[0]
    assert hits[0].doc_id == docs[7].id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.position for h in hits] == [1, 2, 3, 4, 5]
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:]))
    assert hits[0].metadata["title"] == docs[7].metadata["title"]


def test_approximate_kinds_agree_with_exact(subset_vectors, tmp_path):
    docs, vectors = subset_vectors
    ids, meta = [d.id for d in docs], [d.metadata for d in docs]
    queries = vectors[:40] + 0.05 * np.random.default_rng(0).standard_normal(vectors[:40].shape).astype(np.float32)
    exact = VectorIndex.build(vectors, ids, meta, encoder_checksum="e").search(queries, 10)
    for kind, params, floor in (("hnsw", {"M": 16}, 0.95), ("ivfpq", {"nprobe": 8}, 0.5)):
        built = VectorIndex.build(vectors, ids, meta, encoder_checksum="e", kind=kind, params=params)
        built.save(tmp_path / kind)
        loaded = VectorIndex.load(tmp_path / kind, encoder_checksum="e")
        assert loaded.manifest["params"] == built.manifest["params"] and loaded.kind == kind
        got = loaded.search(queries, 10)
        recall = np.mean([len({h.doc_id for h in a} & {h.doc_id for h in b}) / 10 for a, b in zip(exact, got)])
        assert recall >= floor, (kind, recall)


def test_round_trip_keeps_ids_scores_and_checksum(subset_vectors, tmp_path):
    docs, vectors = subset_vectors
    index = VectorIndex.build(vectors, [d.id for d in docs], [d.metadata for d in docs], encoder_checksum="abc")
    index.save(tmp_path / "ix")
    loaded = VectorIndex.load(tmp_path / "ix")
    assert loaded.checksum == index.checksum and len(loaded.checksum) == 64
    assert loaded.search(vectors[3], 3) == index.search(vectors[3:4], 3)
    assert isinstance(loaded.search(vectors[:2], 600)[1][-1], Hit)  # k larger than the index is clamped
    assert len(loaded.search(vectors[:2], 600)[1]) == 500


def test_refuses_index_built_by_another_encoder(small_index_dir, tmp_path):
    with pytest.raises(ArtifactError, match="built by encoder"):
        VectorIndex.load(small_index_dir, encoder_checksum="0" * 64)


def test_cli_refuses_index_of_another_encoder(small_index_dir, baseline_encoder_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(small_index_dir, other)
    manifest = json.loads((other / "abgate-index.json").read_text())
    manifest["encoder_checksum"] = "f" * 64
    (other / "abgate-index.json").write_text(json.dumps(manifest))
    code = main(["eval-offline", str(baseline_encoder_dir), str(other), "--no-store"])
    err = capsys.readouterr().err
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("abgate: error: ") and "built by encoder ffffffffffffffff" in last
    assert "Traceback" not in err


def test_build_rejects_bad_input(subset_vectors):
    docs, vectors = subset_vectors
    with pytest.raises(InputError, match="unique"):
        VectorIndex.build(vectors[:2], ["a", "a"], [{}, {}], encoder_checksum="e")
    with pytest.raises(InputError, match="unknown index kind"):
        VectorIndex.build(vectors[:2], ["a", "b"], [{}, {}], encoder_checksum="e", kind="lsh")
    with pytest.raises(InputError, match="unknown hnsw parameter"):
        VectorIndex.build(vectors[:2], ["a", "b"], [{}, {}], encoder_checksum="e", kind="hnsw", params={"x": 1})
    index = VectorIndex.build(vectors[:2], ["a", "b"], [{}, {}], encoder_checksum="e")
    with pytest.raises(InputError, match="dimensions"):
        index.search(np.zeros((1, 10), dtype=np.float32), 1)


def test_cli_build_index_malformed_and_empty_corpora(baseline_encoder_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"id": "a", "text": "Aspirin and colorectal cancer."}\n{"id": "b", "text": \n'
                      '{"id": "c", "text": "Statins in older adults.", "metadata": {"year": 2020}}\n')
    out = tmp_path / "ix"
    code = main(["build-index", str(baseline_encoder_dir), str(corpus), str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith(f"abgate: error: {corpus}:2: the line is not valid JSON")
    assert not out.exists()

    code = main(["build-index", str(baseline_encoder_dir), str(corpus), str(out), "--skip-bad", "--kind", "hnsw",
                 "--param", "M=8", "--json"])
    captured = capsys.readouterr()
    manifest = json.loads(captured.out)
    assert code == 0 and f"{corpus}:2: skipped" in captured.err
    assert manifest["count"] == 2 and manifest["corpus"]["skipped"] == 1 and manifest["corpus"]["lines"] == [2]
    assert manifest["kind"] == "hnsw" and manifest["params"]["M"] == 8
    index = VectorIndex.load(out)
    assert index.doc_ids == ["a", "c"] and index.metadata[1] == {"year": 2020}

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["build-index", str(baseline_encoder_dir), str(empty), str(tmp_path / "ix2")]) == 2
    assert "the corpus holds no usable documents; it is empty." in capsys.readouterr().err
    assert main(["build-index", str(baseline_encoder_dir), str(corpus), str(tmp_path / "ix3"),
                 "--param", "M"]) == 2
    assert "--param takes KEY=VALUE" in capsys.readouterr().err
