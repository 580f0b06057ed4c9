"""The ONNX encoder runtime: text in, L2-normalised float32 embeddings out, without torch.

An encoder directory (written by `abgate export-model`, see docs/architecture.md) holds `model.onnx`, which
returns token embeddings (`last_hidden_state`), `tokenizer.json`, and the `abgate-encoder.json` manifest that
says how to pool and normalise them. The work splits into three stages, so that batching and threading can
run them separately:

    tokenize (tokenizers)  ->  infer (onnxruntime)  ->  pool + normalise (numpy)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import structlog

from experiments.errors import ArtifactError, InputError
from gateway.artifacts import (ENCODER_MANIFEST, MODEL_FILE, TOKENIZER_FILE, encoder_checksum,
                              read_encoder_manifest)


log = structlog.get_logger("abgate.encoder")

# Measured on a 2-core shared CPU with all-MiniLM-L6-v2, 96 mixed SciFact texts at batch 32: 128-512 tokens
# per inference ran ~13 texts/s, 1,024 ~11, 4,096 ~11, uncapped (32 x 256) 7.4 - activations of long
# batches outgrow the caches. Short queries still batch ~25 at a time under 512.
DEFAULT_MAX_BATCH_TOKENS = 512


def select_providers(device: str) -> list[str]:
    """ONNX Runtime providers for `device` (auto | cpu | cuda), best first."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise InputError("device 'cuda' was asked for but this onnxruntime has no CUDA provider; install "
                         "onnxruntime-gpu instead of onnxruntime (see docs/exporters.md) or use --device cpu.",
                         field="device")
    if device not in ("auto", "cuda"):
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda.", field="device")
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass(frozen=True)
class Batch:
    """A tokenised batch, padded to its longest member."""
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray


class Encoder:
    """Loads one encoder directory; `encode` is thread-safe (onnxruntime sessions are)."""

    def __init__(self, path: Path, manifest: dict, session, tokenizer, providers: list[str],
                 dimensions: int | None, max_batch_tokens: int | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self.checksum: str = manifest["checksum"]
        self.short_id = self.checksum[:16]
        self.providers = providers
        self.full_dimension: int = int(manifest["dimension"])
        self.dimension: int = dimensions or self.full_dimension
        self._session = session
        self._tokenizer = tokenizer
        self._pad_id = tokenizer.token_to_id(manifest.get("pad_token", "[PAD]")) or 0
        self.max_batch_tokens = max_batch_tokens
        self._input_names = {i.name for i in session.get_inputs()}
        self._output_name = session.get_outputs()[0].name

    @classmethod
    def load(cls, path: str | Path, *, threads: int = 1, device: str = "auto",
             dimensions: int | None = None, verify: bool = False,
             max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS) -> "Encoder":
        """`threads` = ONNX Runtime intra-op threads (1 suits a serving process that runs many requests);
        `dimensions` truncates Matryoshka-style to the first d dimensions and renormalises;
        `verify` recomputes the file checksum (slow for big models; build-index does it);
        `max_batch_tokens` caps batch rows x padded length inside `encode` (None: no cap)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        path = Path(path)
        manifest = read_encoder_manifest(path)
        if verify:
            actual = encoder_checksum(path)
            if actual != manifest["checksum"]:
                raise ArtifactError("model.onnx or tokenizer.json changed after export (checksum "
                                    f"{actual[:16]} != manifest {manifest['checksum'][:16]}); re-export.",
                                    file=str(path / ENCODER_MANIFEST), field="checksum")
        if dimensions is not None and not 0 < dimensions <= int(manifest["dimension"]):
            raise InputError(f"dimensions must be between 1 and {manifest['dimension']}, got {dimensions}.",
                             field="dimensions")
        if threads < 0:
            raise InputError("threads must be 0 (let ONNX Runtime decide) or more.", field="threads")

        tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        # The exported tokenizer.json may carry fixed padding/truncation (all-MiniLM-L6-v2 ships Fixed(128));
        # the model was trained at max_length. Padding is done per batch in `tokenize`, after grouping.
        tokenizer.enable_truncation(max_length=int(manifest["max_length"]))
        tokenizer.no_padding()

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: a spinning pool burns the cores that HTTP, the event
        # writer and the other batch worker need. Measured at 2 threads on 2 shared cores (bench variants, load
        # 4-5): 12-16 ms of CPU per request without spinning, 19-27 ms with it.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path / MODEL_FILE), sess_options=options,
                                       providers=select_providers(device))
        in_use = session.get_providers()
        log.info("encoder loaded", path=str(path), checksum=manifest["checksum"][:16],
                 precision=manifest.get("precision"), providers=in_use, threads=threads,
                 dimensions=dimensions or manifest["dimension"])
        return cls(path, manifest, session, tokenizer, in_use, dimensions, max_batch_tokens)

    # -- the three stages -------------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> Batch:
        return self._pad(self._tokenizer.encode_batch(list(texts)))

    def _pad(self, encodings) -> Batch:
        width = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self._pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
            types[row, : len(e.ids)] = e.type_ids
        return Batch(ids, mask, types)

    def infer(self, batch: Batch) -> np.ndarray:
        feeds = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = batch.token_type_ids
        return self._session.run([self._output_name], feeds)[0]

    def pool(self, token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        token_embeddings = token_embeddings.astype(np.float32, copy=False)
        if self.manifest["pooling"] == "cls":
            pooled = token_embeddings[:, 0]
        else:  # mean over real tokens only: padding must not dilute the average
            mask = attention_mask[:, :, None].astype(np.float32)
            pooled = (token_embeddings * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        if self.dimension < self.full_dimension:
            pooled = pooled[:, : self.dimension]
        if self.manifest["normalize"] or self.dimension < self.full_dimension:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.clip(norms, 1e-12, None)
        return np.ascontiguousarray(pooled, dtype=np.float32)

    # -- the whole pipeline -----------------------------------------------------------------------------

    def encode(self, texts: Sequence[str], batch_size: int = 32, progress=None) -> np.ndarray:
        """(n, d) float32, L2-normalised. `progress(done, total)` is called after each batch."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        if batch_size < 1:
            raise InputError("batch_size must be at least 1.", field="batch_size")
        n = len(texts)
        out = np.empty((n, self.dimension), dtype=np.float32)
        if n == 0:
            return out
        encodings = self._tokenizer.encode_batch(list(texts))
        done = 0
        for idx in self._groups([len(e.ids) for e in encodings], batch_size):
            batch = self._pad([encodings[i] for i in idx])
            out[idx] = self.pool(self.infer(batch), batch.attention_mask)
            done += len(idx)
            if progress is not None:
                progress(done, n)
        return out

    def _groups(self, lengths: list[int], batch_size: int) -> list[np.ndarray]:
        """Rows grouped longest first, so a batch's texts have similar lengths and little padding (the order
        is restored on output); a batch also stops at max_batch_tokens rows x length, because large
        activations of long texts fall out of the CPU caches and run slower than smaller batches."""
        order = np.argsort(-np.asarray(lengths), kind="stable")
        budget = self.max_batch_tokens or 0
        groups, start = [], 0
        while start < len(order):
            width = lengths[order[start]]  # the longest in the group: the padded width
            rows = batch_size if not budget else max(1, min(batch_size, budget // max(width, 1)))
            groups.append(order[start:start + rows])
            start += rows
        return groups
