"""Corpus, queries and qrels readers: real SciFact, and hand-made bad files."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporters.corpus import qrels_file, read_corpus, read_qrels, read_queries
from experiments.errors import InputError


def test_reads_scifact_in_beir_layout(scifact_dir):
    docs, info = read_corpus(scifact_dir)
    assert info["count"] == len(docs) == 5183 and info["format"] == "beir" and info["skipped"] == 0
    first = docs[0]
    assert first.id == "4983"
    # title and abstract are joined as BEIR/MTEB do, and the title is kept as metadata
    assert first.text.startswith("Microstructural development of human newborn cerebral white matter")
    assert first.metadata["title"].startswith("Microstructural development")
    assert len({d.id for d in docs}) == len(docs)


def test_reads_scifact_queries_and_qrels(scifact_dir):
    queries = read_queries(scifact_dir)
    assert len(queries) == 1109 and queries["1"] == "0-dimensional biomaterials show inductive properties."
    qrels = read_qrels(qrels_file(scifact_dir, "test"))
    assert len(qrels.judgments) == 300
    assert sum(len(j) for j in qrels.judgments.values()) == 339
    assert qrels.judgments["1"] == {"31715818": 1}
    assert qrels.lines[("1", "31715818")] == 2  # line 1 is the header


def _write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_line_fails_with_its_line_number(tmp_path):
    path = _write_jsonl(tmp_path / "c.jsonl", ['{"id": "a", "text": "alpha"}', '{"id": "b", "text": ',
                                              '{"id": "c", "text": "gamma"}'])
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert err.value.line == 2 and err.value.file == str(path)
    assert "not valid JSON" in err.value.message and "--skip-bad" in err.value.message


def test_skip_bad_reports_every_skipped_line(tmp_path, capsys):
    path = _write_jsonl(tmp_path / "c.jsonl", [
        '{"id": "a", "text": "alpha", "metadata": {"lang": "en"}}',
        'not json',
        '{"text": "no id"}',
        '{"id": "d", "text": ""}',
        '{"id": "a", "text": "duplicate"}',
        '["a", "list"]',
        '{"_id": 7, "title": "T", "text": "body"}',
    ])
    docs, info = read_corpus(path, skip_bad=True)
    assert [d.id for d in docs] == ["a", "7"]
    assert docs[0].metadata == {"lang": "en"} and docs[1].text == "T body"
    assert info["skipped"] == 5 and info["lines"] == [2, 3, 4, 5, 6]
    err = capsys.readouterr().err
    for line in (2, 3, 4, 5, 6):
        assert f"c.jsonl:{line}: skipped" in err


def test_empty_corpus_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        read_corpus(path)
    bad_only = _write_jsonl(tmp_path / "bad.jsonl", ["{", "}"])
    with pytest.raises(InputError, match="2 malformed row"):
        read_corpus(bad_only, skip_bad=True)


def test_parquet_corpus_with_metadata(tmp_path):
    path = tmp_path / "c.parquet"
    table = pa.table({"id": ["x", "y", "z"], "text": ["one", "two", None],
                      "metadata": [json.dumps({"k": 1}), None, None]})
    pq.write_table(table, path)
    with pytest.raises(InputError) as err:
        read_corpus(path)
    assert err.value.line == 3 and err.value.field == "text"
    docs, info = read_corpus(path, skip_bad=True)
    assert [(d.id, d.text, d.metadata) for d in docs] == [("x", "one", {"k": 1}), ("y", "two", {})]
    assert info["format"] == "parquet" and info["lines"] == [3]


def test_parquet_without_required_columns(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"name": ["x"]}), path)
    with pytest.raises(InputError, match="columns 'id' and 'text'"):
        read_corpus(path)


def test_missing_corpus_and_bad_qrels(tmp_path):
    with pytest.raises(InputError, match="no corpus.jsonl"):
        read_corpus(tmp_path)
    qrels = tmp_path / "q.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n1\t2\t1\n3\t4\n")
    with pytest.raises(InputError) as err:
        read_qrels(qrels)
    assert err.value.line == 3
