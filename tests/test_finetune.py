"""`abgate finetune` on real parts: real SciFact pairs, the real all-MiniLM-L6-v2 model, real training steps.

Training tests use a small BEIR folder cut from SciFact (a few pairs, 2 steps, max length 32): seconds, not
the minutes of the real run (whose figures are in docs/finetuning.md).
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exporters.mining import MiningSettings, select_negatives
from exporters.pairs import load_beir, load_pairs_jsonl, no_duplicate_batches
from gateway import cli
from experiments.errors import InputError

TINY = ["--batch-size", "4", "--max-length", "32", "--max-steps", "2", "--threads", "1", "--json"]


@pytest.fixture(scope="module")
def scifact_train(scifact_dir):
    return load_beir(scifact_dir, split="train")


@pytest.fixture(scope="module")
def mini_beir(scifact_dir, scifact_train, tmp_path_factory) -> Path:
    """12 SciFact train queries with their judged documents plus 40 other documents, in BEIR layout."""
    folder = tmp_path_factory.mktemp("mini-scifact")
    (folder / "qrels").mkdir()
    query_ids = sorted(scifact_train.positives)[:12]
    judged = {d for q in query_ids for d in scifact_train.positives[q]}
    others = [d for d in sorted(scifact_train.documents) if d not in judged][:40]
    keep = judged | set(others)
    with open(scifact_dir / "corpus.jsonl") as src, open(folder / "corpus.jsonl", "w") as out:
        out.writelines(line for line in src if json.loads(line)["_id"] in keep)
    with open(scifact_dir / "queries.jsonl") as src, open(folder / "queries.jsonl", "w") as out:
        out.writelines(line for line in src if json.loads(line)["_id"] in set(query_ids))
    rows = [f"{q}\t{d}\t1\n" for q in query_ids for d in sorted(scifact_train.positives[q])]
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return folder


def run_cli(args: list[str], capsys) -> tuple[int, dict | None, str]:
    code = cli.main(args)
    captured = capsys.readouterr()
    payload = json.loads(captured.out.strip().splitlines()[-1]) if captured.out.strip() else None
    return code, payload, captured.err


# -- pairs -------------------------------------------------------------------------------------------------

def test_scifact_train_pairs(scifact_train, scifact_dir):
    assert len(scifact_train.pairs) == 919
    assert len(scifact_train.positives) == 809
    assert len(scifact_train.documents) == 5183
    assert all(p.positive_id in scifact_train.positives[p.query_id] for p in scifact_train.pairs)
    assert load_beir(scifact_dir).checksum == scifact_train.checksum  # the record's data checksum is stable


def test_pairs_jsonl_reads_queries_positives_and_negatives(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"query": "q1", "positive": "doc a", "negative": "doc b"}) + "\n\n"
                    + json.dumps({"query": "q1", "positive": "doc c"}) + "\n")
    data = load_pairs_jsonl(path)
    assert len(data.pairs) == 2 and len(data.positives) == 1
    assert sorted(data.documents.values()) == ["doc a", "doc b", "doc c"]
    assert data.documents[data.pairs[0].negative_id] == "doc b"


@pytest.mark.parametrize("content, where, what", [
    ("", "pairs.jsonl", "empty"),
    ('{"query": "q", "positive": "p"}\n{"query": "q", "positive": "p"}\n{"query": "q", "positive": \n', "pairs.jsonl:3",
     "not valid JSON"),
    ('{"query": "q", "positive": ""}\n', "pairs.jsonl:1: positive", "non-empty string"),
    ('["q", "p"]\n', "pairs.jsonl:1", "JSON object"),
    ('{"query": "q", "positive": "p"}\n', "pairs.jsonl", "at least 2"),
])
def test_bad_pairs_file_is_a_clear_cli_error(tmp_path, capsys, content, where, what):
    path = tmp_path / "pairs.jsonl"
    path.write_text(content)
    code, _, err = run_cli(["finetune", str(tmp_path / "out"), "--pairs", str(path)], capsys)
    assert code == 2
    assert err.startswith("abgate: error: ") and where in err and what in err
    assert "Traceback" not in err


def test_missing_qrels_is_a_clear_cli_error(tmp_path, capsys, mini_beir):
    folder = tmp_path / "beir"
    folder.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (folder / name).write_bytes((mini_beir / name).read_bytes())
    code, _, err = run_cli(["finetune", str(tmp_path / "out"), "--data", str(folder)], capsys)
    assert code == 2 and "qrels/train.tsv" in err and "no qrels" in err


def test_qrels_naming_an_unknown_document_reports_the_line(tmp_path, mini_beir):
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (folder / name).write_bytes((mini_beir / name).read_bytes())
    rows = (mini_beir / "qrels" / "train.tsv").read_text().splitlines()
    query = rows[1].split("\t")[0]
    (folder / "qrels" / "train.tsv").write_text("\n".join(rows[:2] + [f"{query}\tno-such-doc\t1"]) + "\n")
    with pytest.raises(InputError) as info:
        load_beir(folder)
    assert info.value.line == 3 and info.value.field == "corpus-id"


def test_output_folder_is_not_overwritten_by_accident(tmp_path, capsys, mini_beir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli(["finetune", str(out), "--data", str(mini_beir)], capsys)
    assert code == 2 and "--overwrite" in err


# -- batching and mining rules -----------------------------------------------------------------------------

def test_batches_hold_no_in_batch_false_negatives(scifact_train):
    items = [(p.query_id, p.positive_id, None) for p in scifact_train.pairs]
    batches = no_duplicate_batches(items, 32, scifact_train.positives, random.Random(7))
    assert batches == no_duplicate_batches(items, 32, scifact_train.positives, random.Random(7))
    seen = [item for batch in batches for item in batch]
    assert len(seen) == len(set(seen)) and len(seen) >= len(items) - 1  # a lone last row may be dropped
    for batch in batches:
        assert 2 <= len(batch) <= 32
        queries = [q for q, _, _ in batch]
        assert len(set(queries)) == len(queries)
        for q, d, _ in batch:
            # every other row's document must be a true negative for q
            assert not any(d2 in scifact_train.positives[q] for q2, d2, _ in batch if q2 != q)


def test_select_negatives_skips_positives_top_ranks_and_near_duplicates():
    scores = np.array([[0.90, 0.85, 0.80, 0.70, 0.60, 0.50, 0.10],
                       [0.20, 0.30, 0.10, 0.05, 0.04, 0.03, 0.95]], dtype=np.float32)
    positive_scores = np.array([0.80, 0.95], dtype=np.float32)
    excluded = [{2}, {6}]
    settings = MiningSettings(top_k=5, skip_top=1, margin=0.95)
    picks = [select_negatives(scores, positive_scores, excluded, settings, random.Random(s)) for s in range(20)]
    # row 0: top 5 = 0,1,2,3,4; minus positive 2 -> 0,1,3,4; skip 1 -> 1,3,4; margin 0.76 drops 1 -> 3,4
    assert {p[0] for p in picks} == {3, 4}
    # row 1: top 5 = 6,1,0,2,3; minus 6 -> 1,0,2,3; skip 1 -> 0,2,3
    assert {p[1] for p in picks} == {0, 2, 3}
    none_left = MiningSettings(top_k=2, skip_top=2, margin=0)
    assert select_negatives(scores, positive_scores, excluded, none_left, random.Random(0)) == [None, None]


# -- real training -----------------------------------------------------------------------------------------

def test_two_pass_finetune_is_reproducible_and_loadable(tmp_path, capsys, mini_beir, baseline_model_dir):
    from sentence_transformers import SentenceTransformer

    records = []
    for name in ("a", "b"):
        code, record, err = run_cli(["finetune", str(tmp_path / name), "--data", str(mini_beir),
                                     "--base", str(baseline_model_dir), "--mine-top-k", "10", "--skip-top", "1",
                                     *TINY], capsys)
        assert code == 0, err
        records.append(record)
    a, b = records
    assert [p["name"] for p in a["passes"]] == ["in-batch", "hard-negatives"]
    assert all(p["steps"] == 2 and len(p["loss"]) == 2 and all(x > 0 for x in p["loss"]) for p in a["passes"])
    assert a["mining"]["with_negative"] > 0 and a["mining"]["pool"] == len(load_beir(mini_beir).documents)
    assert a["data"]["checksum"] == b["data"]["checksum"] and a["seed"] == 42
    assert a["passes"][0]["loss"] == b["passes"][0]["loss"] and a["passes"][1]["loss"] == b["passes"][1]["loss"]
    assert "pass 2: step 2/2" in err  # progress on stderr
    on_disk = json.loads((tmp_path / "a" / "abgate-finetune.json").read_text())
    assert on_disk["passes"] == a["passes"]

    from safetensors.numpy import load_file

    tuned, again = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    base = load_file(baseline_model_dir / "model.safetensors")
    assert all(np.array_equal(tuned[k], again[k]) for k in tuned)  # same seed, same weights
    assert any(not np.array_equal(tuned[k], base[k]) for k in base if k in tuned)  # and the weights did move
    model = SentenceTransformer(str(tmp_path / "a"), device="cpu")
    assert model.max_seq_length == 256  # serving length kept though training used 32 tokens
    assert model.encode(["Vitamin D deficiency raises the risk of fractures."]).shape == (1, 384)


def test_one_pass_finetune_the_demo_default_reports_progress_with_eta(tmp_path, capsys, mini_beir,
                                                                      baseline_model_dir):
    code, record, err = run_cli(["finetune", str(tmp_path / "one"), "--data", str(mini_beir), "--base",
                                 str(baseline_model_dir), "--passes", "1", *TINY], capsys)
    assert code == 0, err
    assert [p["name"] for p in record["passes"]] == ["in-batch"] and record["mining"] is None
    assert record["settings"]["passes"] == 1 and record["passes"][0]["steps"] == 2
    steps = [line for line in err.splitlines() if line.startswith("abgate finetune: pass 1: step ")]
    assert len(steps) == 2 and "pass 2" not in err
    assert steps[0].startswith("abgate finetune: pass 1: step 1/2 loss ") and ", eta " in steps[0]
    assert steps[1].startswith("abgate finetune: pass 1: step 2/2 loss ") and ", done in " in steps[1]


def test_progress_line_gives_rate_and_eta():
    import io

    from exporters.progress import Progress, duration

    now = [100.0]
    stream = io.StringIO()
    meter = Progress("encoded docs", stream=stream, every=10, clock=lambda: now[0])
    for at, done, note in ((110.0, 200, ""),      # the first call prints: 20/s, 800 left -> 40 s
                           (115.0, 300, ""),      # within 10 s of the last line, on a pipe: quiet
                           (150.0, 1000, "ok")):  # the last one always prints
        now[0] = at
        meter(done, 1000, note)
    assert stream.getvalue().splitlines() == ["abgate: encoded docs 200/1,000 (20/s, eta 40 s)",
                                              "abgate: encoded docs 1,000/1,000 ok (20/s, done in 50 s)"]
    assert (duration(59.4), duration(185), duration(3720)) == ("59 s", "3 min 5 s", "1 h 2 min")
    slow = io.StringIO()
    step = Progress("pass 1: step", stream=slow, every=0, prefix="abgate finetune", clock=lambda: now[0])
    now[0] += 60.0
    step(2, 29, "loss 0.5000")  # 30 s a step, 27 steps left
    assert slow.getvalue() == "abgate finetune: pass 1: step 2/29 loss 0.5000 (30.0 s each, eta 13 min 30 s)\n"


def test_demo_fine_tunes_one_short_pass_unless_full():
    from gateway.simulation.demo import finetune_passes, finetune_recipe

    assert finetune_passes(False, []) == 1
    assert finetune_passes(True, []) == 2
    assert finetune_passes(False, ["--passes", "2", "--epochs", "2"]) == 2  # --finetune-args has the last word
    assert finetune_recipe(False, []) == {"passes": 1, "epochs": 4, "max_length": 128}
    assert finetune_recipe(True, []) == {"passes": 2, "epochs": 1, "max_length": 256}
    assert finetune_recipe(False, ["--max-length", "256", "--lr", "3e-5"])["max_length"] == 256


def test_mined_negatives_are_never_known_positives(mini_beir, baseline_model_dir):
    import torch
    from sentence_transformers import SentenceTransformer

    from exporters.mining import mine

    torch.set_num_threads(1)
    data = load_beir(mini_beir)
    model = SentenceTransformer(str(baseline_model_dir), device="cpu")
    model.max_seq_length = 32
    settings = MiningSettings(top_k=10, skip_top=0, margin=0)
    mined = mine(model, data, settings, seed=3)
    assert len(mined.negatives) == len(data.pairs)
    for pair, negative in zip(data.pairs, mined.negatives):
        assert negative is not None and negative not in data.positives[pair.query_id]
    # with no skip and no margin, the negative comes from the query's top 10 by the model's own scores
    pair, negative = data.pairs[0], mined.negatives[0]
    q = model.encode([data.queries[pair.query_id]], normalize_embeddings=True)[0]
    ranking = np.argsort(-(mined.doc_embeddings @ q))[:10 + len(data.positives[pair.query_id])]
    assert negative in {mined.doc_ids[j] for j in ranking}


def test_finetune_module_does_not_import_torch():
    code = ("import sys, exporters.finetune, exporters.mining, exporters.pairs; "
            "bad = [m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules]; "
            "sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- harvested pairs (issue 14): doc ids resolved in the served corpus, per-example weights --------------------

def _harvest_file(folder: Path, rows: list[dict], corpus_ids: list[str]) -> tuple[Path, Path]:
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d, "title": "", "text": f"document {d}"}) + "\n" for d in corpus_ids))
    pairs = folder / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r | {"provenance": {"clicks": 1}}) + "\n" for r in rows))
    return pairs, corpus


def test_harvested_pairs_resolve_ids_keep_weights_and_drop_a_few_unknown(tmp_path):
    from exporters.pairs import is_harvested, load_harvested

    rows = [{"query": "q one", "positive": "a", "weight": 2.5, "negatives": ["zz", "b", "a"]},
            {"query": "q two", "positive": "b", "weight": 1.0, "negatives": []},
            {"query": "q two", "positive": "c", "weight": 4.0, "negatives": ["b"]},
            {"query": "q three", "positive": "gone", "weight": 1.0, "negatives": []}]
    pairs, corpus = _harvest_file(tmp_path, rows, ["a", "b", "c", "d"])
    assert is_harvested(pairs)
    data = load_harvested(pairs, corpus)
    assert [(p.query, p.positive_id, p.weight, p.negative_id) for p in data.pairs] == [
        ("q one", "a", 2.5, "b"),       # the first known negative that is not a positive of the query
        ("q two", "b", 1.0, None),
        ("q two", "c", 4.0, None)]      # "b" is a positive of "q two": never its negative
    assert data.documents["a"] == "document a" and len(data.documents) == 4
    assert data.source["dropped_pairs"] == 1 and data.source["unknown_documents"] == 2
    assert data.source["pairs_sha256"] == hashlib.sha256(pairs.read_bytes()).hexdigest()


def test_harvested_pairs_from_another_corpus_are_refused(tmp_path):
    from exporters.pairs import load_harvested

    rows = [{"query": f"q{i}", "positive": f"x{i}", "weight": 1.0, "negatives": []} for i in range(4)]
    pairs, corpus = _harvest_file(tmp_path, rows, ["x0", "other1", "other2"])
    with pytest.raises(InputError) as info:
        load_harvested(pairs, corpus)
    assert "3 of the 4 documents" in info.value.message and "another corpus" in info.value.message


def test_weighted_mnrl_is_mnrl_with_unit_weights_and_scales_each_example():
    import torch
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from exporters.finetune import weighted_mnrl

    torch.manual_seed(0)
    embeddings = [torch.nn.functional.normalize(torch.randn(4, 8), dim=1) for _ in range(3)]
    weighted, plain = weighted_mnrl()(None, scale=20.0), MultipleNegativesRankingLoss(None, scale=20.0)
    reference = plain.compute_loss_from_embeddings(embeddings, None)
    assert torch.allclose(weighted.compute_loss_from_embeddings(embeddings, torch.ones(4)), reference)
    assert torch.equal(weighted.compute_loss_from_embeddings(embeddings, None), reference)
    # one example alone: its weight times its own cross-entropy, over the batch size
    only_first = weighted.compute_loss_from_embeddings(embeddings, torch.tensor([3.0, 0.0, 0.0, 0.0]))
    scores = embeddings[0] @ torch.cat(embeddings[1:]).T * 20.0
    first = torch.logsumexp(scores[0], 0) - scores[0, 0]
    assert torch.allclose(only_first, 3.0 * first / 4)
