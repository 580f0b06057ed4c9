"""The ONNX encoder runtime on the real exported all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gateway.artifacts import encoder_checksum
from gateway.encoder import Encoder
from experiments.errors import ArtifactError, InputError

TEXTS = ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
         "Vitamin D deficiency is associated with a higher risk of hip fracture in older women."]


def test_manifest_matches_files(baseline_encoder_dir):
    manifest = json.loads((baseline_encoder_dir / "abgate-encoder.json").read_text())
    assert manifest["checksum"] == encoder_checksum(baseline_encoder_dir)
    assert (manifest["dimension"], manifest["pooling"], manifest["normalize"], manifest["max_length"]) == \
        (384, "mean", True, 256)
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17
    assert len(manifest["source"]["checksum"]) == 64 and "onnxruntime" in manifest["versions"]
    assert manifest["parity"]["min_cosine"] >= 0.9999


def test_embeddings_are_normalised_and_meaningful(baseline_encoder):
    vectors = baseline_encoder.encode(TEXTS)
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > 0.6 > sims[0, 2]  # two sentences about eating are closer than eating vs movies
    assert baseline_encoder.providers[-1] == "CPUExecutionProvider"


def test_batching_and_order_do_not_change_vectors(baseline_encoder):
    one_by_one = np.vstack([baseline_encoder.encode([t], batch_size=1) for t in TEXTS])
    batched = baseline_encoder.encode(TEXTS, batch_size=3)
    np.testing.assert_allclose(one_by_one, batched, atol=1e-5)
    reversed_ = baseline_encoder.encode(TEXTS[::-1])[::-1]
    np.testing.assert_allclose(batched, reversed_, atol=1e-5)
    assert baseline_encoder.encode([]).shape == (0, 384)


def test_long_text_is_truncated_at_max_length(baseline_encoder):
    batch = baseline_encoder.tokenize(["word " * 1000, "short"])
    assert batch.input_ids.shape == (2, 256)
    assert batch.attention_mask[1].sum() == 3  # [CLS] short [SEP]; the rest is padding


def test_matryoshka_truncation_is_renormalised_prefix(baseline_encoder_dir, baseline_encoder):
    small = Encoder.load(baseline_encoder_dir, dimensions=128)
    assert small.dimension == 128 and small.checksum == baseline_encoder.checksum
    truncated = small.encode(TEXTS)
    full = baseline_encoder.encode(TEXTS)[:, :128]
    np.testing.assert_allclose(truncated, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-5)
    with pytest.raises(InputError, match="between 1 and 384"):
        Encoder.load(baseline_encoder_dir, dimensions=1000)


def test_refuses_bad_directories(tmp_path, baseline_encoder_dir):
    with pytest.raises(InputError, match="does not exist"):
        Encoder.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="abgate-encoder.json is missing"):
        Encoder.load(tmp_path)
    copy = tmp_path / "enc"
    shutil.copytree(baseline_encoder_dir, copy)
    with open(copy / "tokenizer.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ArtifactError, match="changed after export"):
        Encoder.load(copy, verify=True)


def test_unknown_device_is_an_input_error(baseline_encoder_dir):
    with pytest.raises(InputError, match="unknown device"):
        Encoder.load(baseline_encoder_dir, device="tpu")


def test_token_budget_groups_without_changing_vectors(baseline_encoder_dir, baseline_encoder):
    texts = TEXTS + ["protein " * 300, "cell " * 120, "Smoking causes lung cancer."]
    uncapped = Encoder.load(baseline_encoder_dir, max_batch_tokens=None)
    np.testing.assert_allclose(baseline_encoder.encode(texts), uncapped.encode(texts), atol=1e-5)
    lengths = [256, 122, 20, 12, 10, 9, 8]
    groups = baseline_encoder._groups(lengths, batch_size=32)  # cap 512 tokens per inference
    assert [list(g) for g in groups] == [[0, 1], [2, 3, 4, 5, 6]]  # longest first; 2 x 256 fits, not 3
    assert [len(g) for g in uncapped._groups(lengths, batch_size=4)] == [4, 3]
