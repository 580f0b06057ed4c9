"""`abgate build-index ENCODER CORPUS OUT`: encode a corpus with an ONNX encoder and write a FAISS index.

The index directory records the encoder's checksum, so that `VectorIndex.load` can refuse to serve it with
another encoder. Like export-model, it is written to a temporary folder and renamed into place when complete.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

from exporters.corpus import Document, read_corpus
from exporters.progress import Progress
from gateway.encoder import Encoder
from experiments.errors import InputError
from gateway.search import VectorIndex


def build_index_from_documents(encoder: Encoder, docs: Sequence[Document], out: str | Path, *,
                               kind: str = "flat-ip", params: dict | None = None, corpus_info: dict | None = None,
                               batch_size: int = 32, progress: bool = True, overwrite: bool = False) -> VectorIndex:
    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("the output folder exists and is not empty; pass --overwrite or choose another.",
                         file=str(out))
    started = time.monotonic()
    vectors = encoder.encode([d.text for d in docs], batch_size=batch_size,
                             progress=Progress("encoded docs", enabled=progress))
    encode_seconds = time.monotonic() - started
    corpus = dict(corpus_info or {})
    corpus.update({"count": len(docs), "encode_seconds": round(encode_seconds, 2)})
    if encoder.dimension != encoder.full_dimension:
        corpus["truncated_dimensions"] = encoder.dimension
    index = VectorIndex.build(vectors, [d.id for d in docs], [d.metadata for d in docs],
                              encoder_checksum=encoder.checksum, kind=kind, params=params, corpus=corpus)
    index.manifest["encoder"] = {"path": str(encoder.path), "precision": encoder.manifest.get("precision"),
                                 "dimension": encoder.dimension}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".index-", dir=out.parent) as tmp:
        stage = Path(tmp) / "index"
        index.save(stage)
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    index.path = out
    return index


def build_index(encoder_dir: str | Path, corpus: str | Path, out: str | Path, *, kind: str = "flat-ip",
                params: dict | None = None, skip_bad: bool = False, batch_size: int = 32, threads: int = 1,
                device: str = "auto", dimensions: int | None = None, limit: int | None = None,
                progress: bool = True, overwrite: bool = False) -> VectorIndex:
    """Reads the corpus (BEIR folder, JSONL or Parquet), encodes it, builds and saves the index."""
    encoder = Encoder.load(encoder_dir, threads=threads, device=device, dimensions=dimensions, verify=True)
    docs, info = read_corpus(corpus, skip_bad=skip_bad)
    if limit is not None:
        docs = docs[:limit]
        info["limit"] = limit
    return build_index_from_documents(encoder, docs, out, kind=kind, params=params, corpus_info=info,
                                      batch_size=batch_size, progress=progress, overwrite=overwrite)
