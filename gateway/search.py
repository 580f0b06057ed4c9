"""FAISS vector indexes: build, save, load, search. Inner product over L2-normalised vectors = cosine.

An index directory (see docs/architecture.md) holds `index.faiss`, `docs.jsonl` (one line per FAISS row, in
order) and the `abgate-index.json` manifest, which records the checksum of the encoder that built it:
`VectorIndex.load(path, encoder_checksum=...)` refuses an index built by another encoder, because its vectors
live in a different space and its results would be silently wrong.

Kinds: `flat-ip` (exact, the default), `hnsw` (graph; params M, ef_construction, ef_search) and `ivfpq`
(inverted lists + product quantisation; params nlist, m, nbits, nprobe).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import structlog

from experiments.errors import ArtifactError, InputError
from gateway.artifacts import DOCS_FILE, INDEX_FILE, INDEX_MANIFEST, file_checksum, read_index_manifest

KINDS = ("flat-ip", "hnsw", "ivfpq")

log = structlog.get_logger("abgate.search")


@dataclass(frozen=True)
class Hit:
    doc_id: str
    score: float
    position: int  # 1-based rank
    metadata: dict = field(default_factory=dict, compare=False)


def default_params(kind: str, count: int, dimension: int) -> dict:
    if kind == "flat-ip":
        return {}
    if kind == "hnsw":
        return {"M": 32, "ef_construction": 200, "ef_search": 128}
    if kind == "ivfpq":
        # ~sqrt(n) lists, and enough training points per list (FAISS wants >= 39 per centroid).
        nlist = max(1, min(int(np.sqrt(count)), count // 39 or 1))
        m = next(m for m in (48, 32, 24, 16, 12, 8, 6, 4, 3, 2, 1) if dimension % m == 0)
        nbits = 8 if count >= 256 * 39 else max(4, min(8, int(np.log2(max(count // 39, 16)))))
        return {"nlist": nlist, "m": m, "nbits": nbits, "nprobe": min(nlist, 16)}
    raise InputError(f"unknown index kind {kind!r}; use one of {', '.join(KINDS)}.", field="kind")


def _new_index(kind: str, dimension: int, params: dict, vectors: np.ndarray):
    if kind == "flat-ip":
        return faiss.IndexFlatIP(dimension)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dimension, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["ef_construction"])
        index.hnsw.efSearch = int(params["ef_search"])
        return index
    if dimension % int(params["m"]):
        raise InputError(f"ivfpq m={params['m']} must divide the dimension {dimension}.", field="m")
    quantizer = faiss.IndexFlatIP(dimension)
    index = faiss.IndexIVFPQ(quantizer, dimension, int(params["nlist"]), int(params["m"]),
                             int(params["nbits"]), faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.nprobe = int(params["nprobe"])
    return index  # faiss's Python wrapper keeps `quantizer` alive through the index


def _apply_search_params(index, kind: str, params: dict) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = int(params["ef_search"])
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])


def _maybe_to_gpu(index, kind: str):
    """Flat and IVF indexes move to GPU when this faiss build has GPUs; HNSW stays on CPU (no GPU version)."""
    if kind == "hnsw" or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except RuntimeError as exc:  # e.g. PQ code sizes the GPU kernels lack: serve from CPU, say so
        log.warning("index stays on CPU", kind=kind, reason=str(exc).splitlines()[0])
        return index, False


class VectorIndex:
    def __init__(self, index, doc_ids: list[str], metadata: list[dict], manifest: dict,
                 path: Path | None = None, threads: int | None = None) -> None:
        self._index = index
        self.doc_ids = doc_ids
        self.metadata = metadata
        self.manifest = manifest
        self.path = path
        self.checksum: str = manifest.get("checksum", "")
        self.encoder_checksum: str = manifest["encoder_checksum"]
        self.dimension: int = int(manifest["dimension"])
        self.kind: str = manifest["kind"]
        self.threads = threads or os.cpu_count() or 1
        self.on_gpu = False

    def __len__(self) -> int:
        return len(self.doc_ids)

    # -- building and saving ----------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, doc_ids: list[str], metadata: list[dict], *, encoder_checksum: str,
              kind: str = "flat-ip", params: dict | None = None, corpus: dict | None = None) -> "VectorIndex":
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(doc_ids) or len(doc_ids) != len(metadata):
            raise ValueError("vectors, doc_ids and metadata must have one row per document")
        if len(doc_ids) == 0:
            raise InputError("cannot build an index over an empty corpus.", field="corpus")
        dupes = len(doc_ids) - len(set(doc_ids))
        if dupes:
            raise InputError(f"the corpus repeats {dupes} document id(s); ids must be unique.", field="id")
        count, dimension = vectors.shape
        merged = default_params(kind, count, dimension)
        unknown = set(params or {}) - set(merged)
        if unknown:
            raise InputError(f"unknown {kind} parameter(s) {sorted(unknown)}; known: {sorted(merged) or 'none'}.",
                             field="params")
        merged.update(params or {})
        index = _new_index(kind, dimension, merged, vectors)
        index.add(vectors)
        manifest = {"format": 1, "checksum": "", "kind": kind, "params": merged,
                    "encoder_checksum": encoder_checksum, "dimension": dimension, "count": count,
                    "corpus": corpus or {}, "faiss_version": faiss.__version__}
        return cls(index, list(doc_ids), list(metadata), manifest)

    def save(self, path: str | Path) -> Path:
        """Writes the three files; the checksum covers index.faiss and docs.jsonl."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        faiss.write_index(index, str(path / INDEX_FILE))
        with open(path / DOCS_FILE, "w") as fh:
            for doc_id, meta in zip(self.doc_ids, self.metadata):
                fh.write(json.dumps({"id": doc_id, "metadata": meta}, ensure_ascii=False) + "\n")
        self.manifest["checksum"] = file_checksum(path / INDEX_FILE, path / DOCS_FILE)
        self.checksum = self.manifest["checksum"]
        (path / INDEX_MANIFEST).write_text(json.dumps(self.manifest, indent=2) + "\n")
        self.path = path
        return path

    # -- loading ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, encoder_checksum: str | None = None, threads: int | None = None,
             gpu: bool = True) -> "VectorIndex":
        path = Path(path)
        manifest = read_index_manifest(path, encoder_checksum=encoder_checksum)
        index = faiss.read_index(str(path / INDEX_FILE))
        doc_ids, metadata = [], []
        with open(path / DOCS_FILE) as fh:
            for line in fh:
                row = json.loads(line)
                doc_ids.append(str(row["id"]))
                metadata.append(row.get("metadata") or {})
        if index.ntotal != len(doc_ids) or index.ntotal != int(manifest["count"]):
            raise ArtifactError(f"index.faiss holds {index.ntotal} vectors but docs.jsonl lists {len(doc_ids)} "
                                f"and the manifest {manifest['count']}; rebuild the index.", file=str(path))
        _apply_search_params(index, manifest["kind"], manifest.get("params", {}))
        result = cls(index, doc_ids, metadata, manifest, path, threads)
        if gpu:
            result._index, result.on_gpu = _maybe_to_gpu(index, manifest["kind"])
        log.info("index loaded", path=str(path), kind=manifest["kind"], count=len(doc_ids),
                 checksum=result.checksum[:16], encoder=manifest["encoder_checksum"][:16], gpu=result.on_gpu)
        return result

    def vectors(self) -> np.ndarray:
        """The stored vectors, row by row (exact for flat-ip and hnsw; PQ codes decode approximately)."""
        index = faiss.index_gpu_to_cpu(self._index) if self.on_gpu else self._index
        if self.kind == "ivfpq":
            faiss.extract_index_ivf(index).make_direct_map()
        return index.reconstruct_n(0, index.ntotal)

    # -- searching --------------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if queries.shape[1] != self.dimension:
            raise InputError(f"query vectors have {queries.shape[1]} dimensions but the index has "
                             f"{self.dimension}; use the encoder that built this index.", field="dimension")
        if k < 1:
            raise InputError("k must be at least 1.", field="k")
        k = min(k, len(self.doc_ids))
        # One query gains nothing from OpenMP threads and pays their wake-up cost; batches use them all.
        faiss.omp_set_num_threads(1 if len(queries) == 1 else self.threads)
        scores, rows = self._index.search(queries, k)
        results = []
        for score_row, id_row in zip(scores, rows):
            hits, position = [], 0
            for score, row in zip(score_row, id_row):
                if row < 0:  # fewer than k reachable (IVF / HNSW): FAISS pads with -1
                    continue
                position += 1
                hits.append(Hit(self.doc_ids[row], float(score), position, self.metadata[row]))
            results.append(hits)
        return results
