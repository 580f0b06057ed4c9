"""`abgate export-model` through the CLI: bad sources, quantised export with parity, failing thresholds."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from experiments.errors import ArtifactError
from exporters.onnx_export import Thresholds, _enforce, parity, read_pooling
from gateway.cli import main
from gateway.encoder import Encoder


def _last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_folder_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code = main(["export-model", str(tmp_path), str(tmp_path / "out")])
    assert code == 2
    assert _last_error(capsys) == (f"abgate: error: {tmp_path}: this folder is not a Hugging Face model: "
                                   "config.json is missing. Give the folder that holds config.json, the weights "
                                   "and tokenizer.json.")
    assert not (tmp_path / "out").exists()


def test_model_folder_without_weights(tmp_path, baseline_model_dir, capsys):
    src = tmp_path / "src"
    shutil.copytree(baseline_model_dir, src, ignore=shutil.ignore_patterns("*.safetensors"))
    assert main(["export-model", str(src), str(tmp_path / "out")]) == 2
    assert "no model weights" in _last_error(capsys)


def test_pooling_settings_read_from_sentence_transformers_config(baseline_model_dir):
    assert read_pooling(baseline_model_dir) == {"pooling": "mean", "normalize": True, "max_length": 256}


def test_parity_figures():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((30, 8)).astype(np.float32)
    same = parity(ref, ref * 3)  # scale does not matter: both are normalised
    assert same["min_cosine"] == pytest.approx(1.0) and same["top10_overlap"] == 1.0
    noisy = parity(ref, ref + rng.standard_normal(ref.shape).astype(np.float32))
    assert noisy["min_cosine"] < 0.9 and noisy["top10_overlap"] < 0.9
    with pytest.raises(ArtifactError, match="min cosine .* < 0.95; mean cosine"):
        _enforce(noisy, Thresholds(0.95, 0.98, 0.8), "int8")


def test_int8_export_reports_parity_and_refuses_strict_thresholds(baseline_model_dir, baseline_encoder,
                                                                 scifact_dir, tmp_path, capsys):
    # An impossible overlap demand fails with the measured figures, and leaves nothing behind.
    out = tmp_path / "int8"
    code = main(["export-model", str(baseline_model_dir), str(out), "--quantize", "int8", "--sample-size", "24",
                 "--data", str(scifact_dir), "--min-overlap", "1.01"])
    error = _last_error(capsys)
    assert code == 1
    assert error.startswith("abgate: error: parity: int8 export failed parity against PyTorch on 24 texts: ")
    assert "top10_overlap" in error and "< 1.01" in error and "Nothing was written" in error
    assert not out.exists() and not list(tmp_path.glob(".export-*"))

    # The default thresholds pass; the manifest records what was measured.
    code = main(["export-model", str(baseline_model_dir), str(out), "--quantize", "int8", "--sample-size", "24",
                 "--data", str(scifact_dir), "--json"])
    manifest = json.loads(capsys.readouterr().out)
    assert code == 0 and manifest["precision"] == "int8"
    assert manifest["quantization"] == {"method": "dynamic", "weight_type": "int8", "per_channel": True}
    assert 0.98 <= manifest["parity"]["mean_cosine"] < 1.0 and manifest["parity"]["texts"] == 24
    assert manifest["parity"]["thresholds"] == {"min_cosine": 0.95, "mean_cosine": 0.98, "overlap": 0.8}
    int8 = Encoder.load(out)
    assert int8.checksum != baseline_encoder.checksum
    texts = ["Aspirin reduces the risk of colorectal cancer.", "Smoking causes lung cancer."]
    cosines = (int8.encode(texts) * baseline_encoder.encode(texts)).sum(axis=1)
    assert np.all(cosines > 0.95)
    assert (out / "model.onnx").stat().st_size < 0.5 * (baseline_encoder.path / "model.onnx").stat().st_size
