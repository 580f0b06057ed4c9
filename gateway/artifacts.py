"""The artifact contract: what an encoder folder and an index folder hold, their checksums and manifest checks.

    encoder folder   model.onnx, tokenizer.json, abgate-encoder.json   (abgate export-model / import-model)
    index folder     index.faiss, docs.jsonl, abgate-index.json        (abgate build-index)

An index records the checksum of the encoder that built it; pairing it with another encoder is refused,
because its vectors live in another space and its results would be silently wrong. Everything that reads or
writes these folders (exporters, the runtime, the serve preflight, the demo) checks them here, once.
No onnxruntime, FAISS or torch here: checking a folder costs a few file reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from experiments.errors import ArtifactError, InputError

ENCODER_MANIFEST = "abgate-encoder.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
INDEX_MANIFEST = "abgate-index.json"
INDEX_FILE = "index.faiss"
DOCS_FILE = "docs.jsonl"

ENCODER_KEYS = ("format", "checksum", "dimension", "pooling", "normalize", "max_length")
INDEX_KEYS = ("format", "kind", "encoder_checksum", "dimension", "count")


def file_checksum(*paths: Path) -> str:
    """sha256 over the bytes of `paths`, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def encoder_checksum(path: str | Path) -> str:
    """sha256 over model.onnx then tokenizer.json: what decides the vectors an encoder produces."""
    path = Path(path)
    return file_checksum(path / MODEL_FILE, path / TOKENIZER_FILE)


def source_checksum(src: Path) -> str:
    """sha256 over every file of a source model folder (relative path + bytes), in a stable order."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(src).rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(file.relative_to(src)).encode())
        with open(file, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read(path: Path, manifest_name: str, files: tuple[str, ...], keys: tuple[str, ...], what: str,
          build: str) -> dict:
    if not path.is_dir():
        raise InputError(f"{what} directory {path} does not exist; build one with `{build}`.", file=str(path))
    for name in (manifest_name, *files):
        if not (path / name).is_file():
            raise ArtifactError(f"{path} is not an abgate {what} directory: {name} is missing; build one with "
                                f"`{build}`.", file=str(path / name))
    manifest_path = path / manifest_name
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"the {what} manifest is not valid JSON ({getattr(exc, 'msg', exc)}); rebuild it with "
                            f"`{build}`.", file=str(manifest_path), line=getattr(exc, "lineno", None)) from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"the {what} manifest is not a JSON object; rebuild it with `{build}`.",
                            file=str(manifest_path))
    for key in keys:
        if key not in manifest:
            raise ArtifactError(f"the {what} manifest lacks {key!r}; rebuild it with `{build}`.",
                                file=str(manifest_path), field=key)
    if manifest["format"] != 1:
        raise ArtifactError(f"{what} manifest format {manifest['format']} is not supported (expected 1).",
                            file=str(manifest_path), field="format")
    return manifest


def read_encoder_manifest(path: str | Path) -> dict:
    """The manifest of an encoder folder, after checking the folder holds every file an encoder needs."""
    return _read(Path(path), ENCODER_MANIFEST, (MODEL_FILE, TOKENIZER_FILE), ENCODER_KEYS, "encoder",
                 "abgate export-model SRC OUT")


def read_index_manifest(path: str | Path, *, encoder_checksum: str | None = None) -> dict:
    """The manifest of an index folder; with `encoder_checksum`, refuses an index built by another encoder."""
    path = Path(path)
    manifest = _read(path, INDEX_MANIFEST, (INDEX_FILE, DOCS_FILE), INDEX_KEYS, "index", "abgate build-index")
    if encoder_checksum is not None:
        check_pair(manifest, encoder_checksum, path / INDEX_MANIFEST)
    return manifest


def check_pair(index_manifest: dict, encoder_checksum: str, where: Path | str | None = None) -> None:
    built_by = str(index_manifest.get("encoder_checksum", ""))
    if built_by != encoder_checksum:
        raise ArtifactError(
            f"this index was built by encoder {built_by[:16]}, not by the encoder given ({encoder_checksum[:16]}); "
            "its vectors are in another space. Rebuild it with `abgate build-index` using this encoder, or pair "
            "it with the encoder that built it.", file=str(where) if where else None, field="encoder_checksum")


def check_dimensions(index_dimension: int, encoder_dimension: int, where: str, arm: str) -> None:
    if int(index_dimension) != int(encoder_dimension):
        raise InputError(f"index {where} has {index_dimension} dimensions but arm {arm!r} encodes "
                         f"{encoder_dimension}; build the index with the same `dimensions`", field="dimensions")


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def encoder_ready(encoder: Path, source: Path) -> bool:
    """Exported (the manifest is written last) from this very source model (same files, same bytes)."""
    manifest = _json(Path(encoder) / ENCODER_MANIFEST)
    return bool(manifest) and (manifest.get("source") or {}).get("checksum") == source_checksum(source)


def index_ready(index: Path, encoder: Path) -> bool:
    """Built (the manifest is written last) by this very encoder."""
    manifest, enc = _json(Path(index) / INDEX_MANIFEST), _json(Path(encoder) / ENCODER_MANIFEST)
    return bool(manifest and enc) and manifest.get("encoder_checksum") == enc.get("checksum")
