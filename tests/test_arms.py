"""Arms that differ in their encoder: a real `abgate serve` process with three arms, each its own encoder or
encoder settings and its own index (fp32, int8, the fp32 encoder truncated to 128 Matryoshka dimensions), and
the preflight that refuses an index of another dimension."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from conftest import MATRYOSHKA_DIMENSIONS, GatewayProcess
from experiments.loader import load_folder
from gateway.assignment import Assigner
from gateway.cli import main
from gateway.encoder import Encoder
from gateway.search import VectorIndex

pytestmark = pytest.mark.slow
QUERIES_PER_ARM = 8


def write_experiment(folder: Path, name: str, arms: list[dict]) -> Path:
    """A running experiment over the whole `retrieval` layer, the first arm as control, equal weights."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for arm in arms:
        extra = f", dimensions: {arm['dimensions']}" if arm.get("dimensions") else ""
        lines.append(f"  - {{name: {arm['name']}, weight: 1, encoder: {arm['encoder']}, index: {arm['index']}, "
                     f"top_k: 10{extra}}}")
    arm_lines = "\n".join(lines)
    text = f"""name: {name}
description: Arms that differ in their encoder.
owner: search-relevance
layer: retrieval
unit: user
salt: {name}-salt
status: running
start: 2026-01-01T00:00:00Z
allocation: 1.0
control: {arms[0]['name']}
arms:
{arm_lines}
metrics:
  primary: ctr
design: {{mde: 0.02, sequential: true}}
"""
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def arms(baseline_encoder_dir, small_index_dir, int8_encoder_dir, int8_index_dir, matryoshka_index_dir):
    return [
        {"name": "fp32", "encoder": baseline_encoder_dir, "index": small_index_dir},
        {"name": "int8", "encoder": int8_encoder_dir, "index": int8_index_dir},
        {"name": "mrl128", "encoder": baseline_encoder_dir, "index": matryoshka_index_dir,
         "dimensions": MATRYOSHKA_DIMENSIONS},
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory, arms):
    workdir = tmp_path_factory.mktemp("arms")
    experiments = workdir / "experiments"
    write_experiment(experiments, "encoders", arms)
    gateway = GatewayProcess(workdir, experiments, "--max-wait-ms", "5")
    gateway.experiments = experiments
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def queries(scifact_dir, scifact_subset) -> list[str]:
    from exporters.corpus import read_queries

    texts = read_queries(scifact_dir)
    _, query_ids = scifact_subset
    return [texts[q] for q in query_ids[:QUERIES_PER_ARM]]


def served(server, queries: list[str]) -> dict[str, list[list[tuple[str, float]]]]:
    """Each arm's (doc id, score) lists for `queries`, from the gateway over HTTP."""
    assigner = Assigner(list(load_folder(server.experiments).experiments.values()), "retrieval")
    units: dict[str, str] = {}
    for i in range(300):
        units.setdefault(assigner.assign(f"user-{i}").arm.name, f"user-{i}")
    assert set(units) == {"fp32", "int8", "mrl128"}
    out = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for arm, unit in units.items():
            out[arm] = []
            for query in queries:
                response = client.post("/v1/search", json={"query": query, "unit_id": unit, "k": 10})
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["experiment"] == "encoders" and body["arm"] == arm
                out[arm].append([(r["doc_id"], r["score"]) for r in body["results"]])
    return out


def offline(arm: dict, queries: list[str]) -> list[list[tuple[str, float]]]:
    """The same arm searched in-process: its own encoder (and dimensions) and its own index. One query per
    inference, as the gateway ran them (sequential requests): int8 dynamic quantisation scales activations by
    the whole batch's range, so an int8 vector depends on what it was batched with."""
    encoder = Encoder.load(arm["encoder"], threads=1, device="cpu", dimensions=arm.get("dimensions"))
    index = VectorIndex.load(arm["index"], encoder_checksum=encoder.checksum, gpu=False)
    return [[(h.doc_id, h.score) for h in index.search(encoder.encode([query]), 10)[0]] for query in queries]


@pytest.fixture(scope="module")
def results(server, queries):
    return served(server, queries)


def assert_same(got, expected):
    for got_hits, expected_hits in zip(got, expected, strict=True):
        assert [d for d, _ in got_hits] == [d for d, _ in expected_hits]
        assert [s for _, s in got_hits] == pytest.approx([s for _, s in expected_hits], abs=1e-5)


def test_two_encoders_in_one_gateway_each_serve_their_own_search(results, arms, queries):
    fp32, int8 = arms[0], arms[1]
    assert Encoder.load(fp32["encoder"]).checksum != Encoder.load(int8["encoder"]).checksum
    assert_same(results["fp32"], offline(fp32, queries))
    assert_same(results["int8"], offline(int8, queries))
    # The arms really differ: int8 weights move every score, and some rankings with them.
    score_gaps = [abs(a[0][1] - b[0][1]) for a, b in zip(results["fp32"], results["int8"])]
    assert min(score_gaps) > 1e-4, score_gaps
    assert any([d for d, _ in a] != [d for d, _ in b] for a, b in zip(results["fp32"], results["int8"]))


def test_matryoshka_arm_serves_its_truncated_search(results, arms, queries):
    mrl = arms[2]
    index = VectorIndex.load(mrl["index"], gpu=False)
    assert index.dimension == MATRYOSHKA_DIMENSIONS and index.manifest["corpus"]["truncated_dimensions"] == 128
    assert_same(results["mrl128"], offline(mrl, queries))
    # Same encoder as fp32, first 128 of 384 dimensions renormalised: other scores, other rankings.
    assert any([d for d, _ in a] != [d for d, _ in b] for a, b in zip(results["fp32"], results["mrl128"]))
    assert all(abs(a[0][1] - b[0][1]) > 1e-4 for a, b in zip(results["fp32"], results["mrl128"]))


@pytest.mark.parametrize("case", ["truncated arm, full index", "full arm, truncated index"])
def test_index_of_another_dimension_is_refused(case, tmp_path, baseline_encoder_dir, small_index_dir,
                                               matryoshka_index_dir, capsys):
    if case == "truncated arm, full index":
        arm = {"name": "short", "encoder": baseline_encoder_dir, "index": small_index_dir,
               "dimensions": MATRYOSHKA_DIMENSIONS}
        index, index_dims, arm_dims = small_index_dir, 384, MATRYOSHKA_DIMENSIONS
    else:
        arm = {"name": "short", "encoder": baseline_encoder_dir, "index": matryoshka_index_dir}
        index, index_dims, arm_dims = matryoshka_index_dir, MATRYOSHKA_DIMENSIONS, 384
    control = {"name": "full", "encoder": baseline_encoder_dir, "index": small_index_dir}
    write_experiment(tmp_path / "experiments", "mismatch", [control, arm])
    code = main(["serve", "--experiments", str(tmp_path / "experiments"), "--state-file",
                 str(tmp_path / "state.json"), "--check"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (f"abgate: error: dimensions: index {index} has {index_dims} dimensions but arm 'short' "
                       f"encodes {arm_dims}; build the index with the same `dimensions`")
