"""`abgate import-model`: an ONNX file abgate did not export (optimum-cli's) served as an encoder, measured
against abgate's own export of the same model, and the one-line errors for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gateway.artifacts import read_encoder_manifest
from gateway.cli import main
from gateway.encoder import Encoder

pytestmark = pytest.mark.slow


def _sample(scifact_dir, n: int = 48) -> list[str]:
    from exporters.onnx_export import sample_texts

    return sample_texts(scifact_dir, n)


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_optimum_export_imported_matches_abgates_own_export(imported_encoder_dir, baseline_encoder, scifact_dir):
    manifest = read_encoder_manifest(imported_encoder_dir)
    assert manifest["import"]["output"] == "token_embeddings" and not manifest["import"]["pooled_in_graph"]
    assert manifest["import"]["inputs"] == ["input_ids", "attention_mask"]  # optimum's export has no token types
    assert (manifest["dimension"], manifest["pooling"], manifest["normalize"], manifest["max_length"]) == \
        (384, "mean", True, 256)
    parity = manifest["parity"]
    assert parity["status"] == "verified" and parity["texts"] == 64 and parity["min_cosine"] > 0.9999

    imported = Encoder.load(imported_encoder_dir, threads=1, device="cpu")
    assert imported.checksum != baseline_encoder.checksum  # another graph, not a copy of abgate's
    texts = _sample(scifact_dir)
    ours, theirs = baseline_encoder.encode(texts), imported.encode(texts)
    cosines = (ours * theirs).sum(axis=1)
    assert theirs.shape == (len(texts), 384)
    assert cosines.min() > 0.9999, cosines.min()
    assert np.linalg.norm(theirs, axis=1) == pytest.approx(1.0, abs=1e-5)


def test_pooled_output_without_reference_is_served_and_unverified(optimum_onnx_dir, baseline_encoder,
                                                                    scifact_dir, tmp_path, capsys):
    out = tmp_path / "pooled"
    code = main(["import-model", str(optimum_onnx_dir / "model.onnx"), str(out), "--tokenizer",
                 str(optimum_onnx_dir), "--pooling", "mean", "--normalize", "--output", "sentence_embedding",
                 "--max-length", "256", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["parity"] == {"status": "unverified"}
    assert printed["import"]["pooled_in_graph"] and printed["dimension"] == 384
    encoder = Encoder.load(out, threads=1, device="cpu")
    texts = _sample(scifact_dir, 16)
    cosines = (encoder.encode(texts) * baseline_encoder.encode(texts)).sum(axis=1)
    assert cosines.min() > 0.9999, cosines.min()


def test_not_an_onnx_file(optimum_onnx_dir, tmp_path, capsys):
    fake = tmp_path / "model.onnx"
    fake.write_text("this is not a model\n")
    code = main(["import-model", str(fake), str(tmp_path / "out"), "--tokenizer", str(optimum_onnx_dir),
                 "--pooling", "mean"])
    assert code == 2
    assert _last_error(capsys) == (f"abgate: error: {fake}: MODEL: this file is not an ONNX model (DecodeError); "
                                   "give the .onnx file that optimum-cli or torch.onnx.export wrote.")
    assert not (tmp_path / "out").exists()


def test_tokenizer_folder_without_tokenizer_json(optimum_onnx_dir, tmp_path, capsys):
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    shutil.copyfile(optimum_onnx_dir / "vocab.txt", tokenizer / "vocab.txt")
    code = main(["import-model", str(optimum_onnx_dir / "model.onnx"), str(tmp_path / "out"), "--tokenizer",
                 str(tokenizer), "--pooling", "mean"])
    assert code == 2
    assert _last_error(capsys).startswith(f"abgate: error: {tokenizer / 'tokenizer.json'}: --tokenizer: this "
                                          "folder has no tokenizer.json; the runtime needs a fast tokenizer")


def test_unknown_pooling(optimum_onnx_dir, tmp_path, capsys):
    model = optimum_onnx_dir / "model.onnx"
    code = main(["import-model", str(model), str(tmp_path / "out"), "--tokenizer", str(optimum_onnx_dir),
                 "--pooling", "max"])
    assert code == 2
    assert _last_error(capsys).startswith(f"abgate: error: {model}: --pooling: pooling 'max' is not supported; "
                                          "give --pooling mean or --pooling cls")


def test_pooling_that_contradicts_the_reference(optimum_onnx_dir, baseline_model_dir, tmp_path, capsys):
    code = main(["import-model", str(optimum_onnx_dir / "model.onnx"), str(tmp_path / "out"), "--tokenizer",
                 str(optimum_onnx_dir), "--pooling", "cls", "--normalize", "--reference", str(baseline_model_dir)])
    assert code == 2
    assert _last_error(capsys) == (f"abgate: error: {baseline_model_dir}: --pooling: the reference model pools "
                                   "with mean (its *_Pooling/config.json), not cls; pass --pooling mean.")
    assert not (tmp_path / "out").exists()


def test_graph_that_pools_otherwise_fails_parity(optimum_onnx_dir, baseline_model_dir, scifact_dir, tmp_path,
                                                 capsys):
    # The reference says CLS and so does --pooling, but the graph's sentence_embedding output is mean-pooled:
    # the settings agree with each other, so only the cosine check can catch it.
    reference = tmp_path / "reference"
    shutil.copytree(baseline_model_dir, reference)
    (reference / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 384, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}))
    model = optimum_onnx_dir / "model.onnx"
    code = main(["import-model", str(model), str(tmp_path / "out"), "--tokenizer", str(optimum_onnx_dir),
                 "--pooling", "cls", "--normalize", "--output", "sentence_embedding", "--reference",
                 str(reference), "--data", str(scifact_dir), "--sample-size", "16"])
    assert code == 2
    error = _last_error(capsys)
    assert error.startswith(f"abgate: error: {model}: --pooling: the imported encoder does not reproduce "
                            f"{reference} on 16 texts (min cosine ")
    assert "Nothing was written" in error and not (tmp_path / "out").exists()
