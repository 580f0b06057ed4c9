"""`abgate harvest` on real logged traffic: a real `abgate serve` with two arms (flat vs HNSW index of 500 SciFact
documents, one encoder), `abgate simulate` sending SciFact **train** queries, real chdb. Then `abgate finetune
--pairs` on what was harvested, and `abgate experiments propose` for the next experiment.

The simulated users click by the position-based model of docs/simulator.md with examination 1/position, so
the propensity curve harvest estimates from the arms' different rankings can be compared with 1/position.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import pathlib
from pathlib import Path

import pytest
import yaml

from conftest import GatewayProcess, write_two_arm_experiment
from exporters.corpus import qrels_file, read_qrels, read_queries
from exporters.pairs import fingerprint
from gateway import cli
from cli_errors import one_line_error as _one_line_error

slow = pytest.mark.slow  # the tests on a real gateway's log; the estimator's own tests run without one
SIM = ["--users", "240", "--seed", "3", "--noise", "0.25", "--mean-visits", "3", "--mean-searches", "3"]


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def train_beir(scifact_dir, scifact_subset, tmp_path_factory) -> tuple[Path, dict[str, dict[str, int]]]:
    """SciFact train queries that have a relevant document among the 500 indexed ones, in BEIR layout."""
    docs, _ = scifact_subset
    indexed = {d.id for d in docs}
    train = read_qrels(qrels_file(scifact_dir, "train")).judgments
    kept = {q: j for q, j in train.items() if any(g > 0 and d in indexed for d, g in j.items())}
    queries = read_queries(scifact_dir)
    folder = tmp_path_factory.mktemp("train-in-index")
    (folder / "qrels").mkdir()
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in kept))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{g}\n" for q, j in kept.items() for d, g in j.items()))
    return folder, kept


@pytest.fixture(scope="module")
def logged(tmp_path_factory, gateway_artifacts, matryoshka_index_dir, train_beir, scifact_dir) -> dict:
    """One gateway run, stopped (flushed) before harvest opens its embedded store in this process.

    The second arm searches the first 128 Matryoshka dimensions instead of an HNSW index: on these queries the
    HNSW index returns the flat index's top 10 in the same order (measured: 1 of about 1,200 shown (query, doc)
    moved), which leaves no intervention to learn position bias from; 128 dimensions reorder most lists.
    """
    workdir = tmp_path_factory.mktemp("harvest")
    experiments = workdir / "experiments"
    encoder_dir, flat_dir, _ = gateway_artifacts
    path = write_two_arm_experiment(experiments, encoder_dir, flat_dir, matryoshka_index_dir, name="flat-vs-m128")
    path.write_text(path.read_text().replace("{name: hnsw,", "{name: m128, dimensions: 128,"))
    gateway = GatewayProcess(workdir, experiments, "--no-access-log")
    try:
        code = cli.main(["simulate", "--url", gateway.url, "--data", str(train_beir[0]), "--split", "train", *SIM,
                         "--json"])
    finally:
        assert gateway.stop() == 0
    assert code == 0
    test_queries = read_queries(scifact_dir)
    evaluation = workdir / "eval-queries.txt"
    evaluation.write_text("".join(test_queries[q] + "\n" for q in read_qrels(qrels_file(scifact_dir, "test"))
                                  .judgments))
    return {"dsn": f"chdb://{workdir / 'store'}", "workdir": workdir, "experiment": path,
            "exclude": ["--exclude-queries", str(evaluation)]}


@pytest.fixture(scope="module")
def harvested(logged, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    code = cli.main(["harvest", "--dsn", logged["dsn"], "--out", str(out), *logged["exclude"], "--json"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    return {"path": out, "rows": rows, "meta": meta}


@slow
def test_harvest_writes_weighted_pairs_with_provenance(harvested, train_beir):
    rows, meta = harvested["rows"], harvested["meta"]
    assert len(rows) >= 20 and meta["counts"]["pairs"] == len(rows)
    for row in rows:
        p = row["provenance"]
        assert row["weight"] > 0 and p["clicks"] >= 1 and p["impressions"] >= p["clicks"]
        assert p["clicks"] == p["units"]  # --per-unit-cap 1: each unit adds one click to a pair
        assert sum(p["positions"].values()) == p["clicks"] and row["positive"] not in row["negatives"]
        # the weight is the clipped inverse propensity of each counted click's position
        curve = meta["propensities"]["positions"]
        expected = 0.0
        for position, count in p["positions"].items():
            value = 1.0
            for k in range(1, int(position) + 1):
                value = curve[str(k)]["propensity"] or value
            expected += count * min(1 / value, meta["weights"]["clip"])
        assert row["weight"] == pytest.approx(expected, rel=2e-3)
    positives = {(r["query"], r["positive"]) for r in rows}
    assert not any((r["query"], n) in positives for r in rows for n in r["negatives"])
    assert sum(bool(r["negatives"]) for r in rows) > 0
    assert meta["corpus"]["fingerprint"] == fingerprint({r["positive"] for r in rows} |
                                                        {n for r in rows for n in r["negatives"]})
    assert len(meta["corpus"]["index_checksums"]) == 2 and meta["corpus"]["seen_documents"] <= 500
    assert meta["exclusion"]["kind"] == "queries-file" and meta["exclusion"]["queries"] == 300
    # satisfied clicks land on judged-relevant documents: a bounce (short dwell) is not a positive
    assert _precision(rows, train_beir) >= 0.9  # measured: 1.0 (119 of 119 pairs)


def _precision(rows: list[dict], train_beir) -> float:
    """Share of harvested pairs whose positive is judged relevant to the query in SciFact train."""
    folder, judgments = train_beir
    queries = read_queries(folder)
    relevant = {(" ".join(queries[q].split()), d) for q, j in judgments.items() for d, g in j.items() if g > 0}
    return sum((r["query"], r["positive"]) in relevant for r in rows) / len(rows)


@slow
def test_every_click_counts_without_the_dwell_rule(logged, harvested, tmp_path, capsys, train_beir):
    out = tmp_path / "all-clicks.jsonl"
    code, _, err = run(["harvest", "--dsn", logged["dsn"], "--out", str(out), *logged["exclude"],
                        "--dwell-threshold", "0", "--no-ipw", "--json"], capsys)
    assert code == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["counts"]["satisfied_clicks"] == meta["counts"]["clicks"] > harvested["meta"]["counts"]["satisfied_clicks"]
    assert len(rows) > len(harvested["rows"]) and all(r["weight"] == r["provenance"]["clicks"] for r in rows)
    assert meta["propensities"] is None and meta["weights"] == {"kind": "naive", "clip": None, "propensities": None}
    # noise clicks (the simulator's 0.25 on irrelevant results) become positives: measured 0.15 of pairs relevant
    assert _precision(rows, train_beir) < 0.5
    # a higher cap lets a unit's repeated satisfied clicks count, up to the cap
    code, _, err = run(["harvest", "--dsn", logged["dsn"], "--out", str(out), *logged["exclude"], "--per-unit-cap",
                        "3", "--no-ipw"], capsys)
    assert code == 0, err
    capped = [json.loads(line)["provenance"] for line in out.read_text().splitlines()]
    assert any(p["clicks"] > p["units"] for p in capped) and all(p["clicks"] <= 3 * p["units"] for p in capped)


@slow
def test_propensity_curve_from_the_two_arms_falls_like_one_over_position(harvested, capsys):
    curve = harvested["meta"]["propensities"]
    positions = curve["positions"]
    assert positions["1"] == {"propensity": 1.0, "low": 1.0, "high": 1.0}
    assert curve["interventions"] > 0
    estimated = [(int(k), v) for k, v in positions.items() if v["propensity"] is not None]
    values = [v["propensity"] for _, v in estimated]
    with capsys.disabled():  # the measured curve, for the record
        print("\npropensity curve (estimate [95% interval] vs 1/position):")
        for k, v in estimated:
            print(f"  {k:>2}: {v['propensity']:.3f} [{v['low']}, {v['high']}]  1/k = {1 / k:.3f}")
    assert len(estimated) >= 3
    assert values[1] < 1.0 and values[-1] < values[1]  # decreasing from position 1
    # the simulator's truth is 1/position: position 2's interval lies below 1, and the first positions' hold it
    assert positions["2"]["high"] < 1.0
    for k in range(2, 7):
        assert positions[str(k)]["low"] <= 1 / k <= positions[str(k)]["high"], (k, positions[str(k)])


@slow
def test_harvest_and_finetune_never_read_judgments(logged, harvested, tmp_path, capsys, monkeypatch, scifact_dir,
                                               baseline_model_dir):
    opened = []
    real_open, real_path_open = builtins.open, pathlib.Path.open

    def guarded_open(file, *args, **kwargs):
        if "qrels" in str(file):
            opened.append(str(file))
            raise AssertionError(f"opened a qrels file: {file}")
        return real_open(file, *args, **kwargs)

    def guarded_path_open(self, *args, **kwargs):
        if "qrels" in str(self):
            opened.append(str(self))
            raise AssertionError(f"opened a qrels file: {self}")
        return real_path_open(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(pathlib.Path, "open", guarded_path_open)
    with pytest.raises(AssertionError):  # the guard works
        (scifact_dir / "qrels" / "test.tsv").read_text()
    opened.clear()
    pairs = tmp_path / "pairs.jsonl"
    code, _, err = run(["harvest", "--dsn", logged["dsn"], "--out", str(pairs), *logged["exclude"]], capsys)
    assert code == 0, err
    code, out, err = run(["finetune", str(tmp_path / "model"), "--pairs", str(pairs), "--data", str(scifact_dir),
                          "--base", str(baseline_model_dir), "--passes", "1", "--batch-size", "4",
                          "--max-length", "32", "--max-steps", "1", "--threads", "1", "--json"], capsys)
    assert code == 0, err
    assert opened == []
    record = json.loads(out.strip().splitlines()[-1])
    assert record["data"]["kind"] == "harvest" and record["passes"][0]["steps"] == 1
    assert record["data"]["pairs_sha256"] == hashlib.sha256(pairs.read_bytes()).hexdigest()
    assert record["data"]["harvest"]["corpus"]["fingerprint"] == harvested["meta"]["corpus"]["fingerprint"]
    assert record["weighting"]["kind"].startswith("per-example weighted MNRL")
    on_disk = json.loads((tmp_path / "model" / "abgate-finetune.json").read_text())
    assert on_disk["data"]["pairs_sha256"] == record["data"]["pairs_sha256"]


@slow
def test_bad_windows_are_one_line_errors(logged, tmp_path, capsys, train_beir):
    base = ["harvest", "--dsn", logged["dsn"], "--out", str(tmp_path / "p.jsonl")]
    # every simulated query is judged in the folder's train split: leaving that split out leaves nothing
    _one_line_error(*run([*base, "--exclude-qrels", str(train_beir[0]), "--exclude-split", "train"], capsys)[::2],
                    "every impression is of an evaluation query")
    _one_line_error(*run([*base, *logged["exclude"], "--since", "2099-01-01"], capsys)[::2], "no impressions")
    _one_line_error(*run([*base, *logged["exclude"], "--experiment", "no-such"], capsys)[::2], "no impressions")
    _one_line_error(*run(base, capsys)[::2], "--exclude-queries", "--exclude-qrels", "--no-exclude")
    # one arm alone shows each (query, doc) at one position: no intervention to learn position bias from
    _one_line_error(*run([*base, *logged["exclude"], "--arm", "flat"], capsys)[::2],
                    "propensities cannot be estimated: no (query, doc) shown at two positions by different arms",
                    "--no-ipw", "--assume-eta")
    code, _, err = run([*base, *logged["exclude"], "--arm", "flat", "--no-ipw"], capsys)
    assert code == 0, err
    code, _, err = run([*base, *logged["exclude"], "--arm", "flat", "--assume-eta", "1", "--json"], capsys)
    assert code == 0 and "assuming 1/position^1" in err
    meta = json.loads((tmp_path / "p.jsonl.meta.json").read_text())
    assert meta["propensities"]["positions"]["2"]["propensity"] == 0.5
    assert meta["propensities"]["method"].startswith("assumed")
    assert (tmp_path / "p.jsonl").read_text().strip()


@slow
def test_pairs_from_another_corpus_are_refused(harvested, tmp_path, capsys, scifact_dir, scifact_subset):
    docs, _ = scifact_subset
    indexed = {d.id for d in docs}
    other = tmp_path / "other-corpus.jsonl"
    with open(scifact_dir / "corpus.jsonl") as src:
        rows = [line for line in src if json.loads(line)["_id"] not in indexed][:50]
    other.write_text("".join(rows))
    code, _, err = run(["finetune", str(tmp_path / "out"), "--pairs", str(harvested["path"]), "--corpus",
                        str(other)], capsys)
    _one_line_error(code, err, "not in", "another corpus", "--corpus")
    edited = tmp_path / "edited.jsonl"
    lines = harvested["path"].read_text().splitlines()
    first = json.loads(lines[0]) | {"positive": "no-such-doc"}
    edited.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    Path(str(edited) + ".meta.json").write_text(Path(str(harvested["path"]) + ".meta.json").read_text())
    code, _, err = run(["finetune", str(tmp_path / "out"), "--pairs", str(edited), "--data", str(scifact_dir)],
                       capsys)
    _one_line_error(code, err, "fingerprint")


@slow
def test_propose_writes_a_valid_draft_against_the_champion(logged, gateway_artifacts, tmp_path, capsys):
    from experiments.loader import load_file

    encoder_dir, _, hnsw_dir = gateway_artifacts  # the HNSW index: built with the candidate's (same) encoder
    out = tmp_path / "next.yaml"
    args = ["experiments", "propose", "--champion", "flat", "--candidate", str(encoder_dir), "--candidate-index",
            str(hnsw_dir), "--from", str(logged["experiment"]), "--out", str(out)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    new, errors = load_file(out)
    last, _ = load_file(logged["experiment"])
    assert errors == [] and new.status == "draft" and new.control == "flat"
    assert [a.name for a in new.arms] == ["flat", "candidate"] and new.arm("candidate").index == str(hnsw_dir)
    assert new.arm("flat").index == last.arm("flat").index and new.salt != last.salt
    assert new.metrics == last.metrics and new.design == last.design and new.layer == last.layer
    _one_line_error(*run(args, capsys)[::2], "exists already")  # never overwrites
    fake = tmp_path / "index"
    fake.mkdir()
    (fake / "abgate-index.json").write_text(json.dumps({"encoder_checksum": "0" * 64}))
    bad = [*args[:-1], str(tmp_path / "other.yaml")]
    bad[bad.index(str(hnsw_dir))] = str(fake)
    _one_line_error(*run(bad, capsys)[::2], "build-index")
    assert yaml.safe_load(out.read_text())["arms"][1]["encoder"] == str(encoder_dir)


# -- the estimator alone, on clicks drawn from a known position-based model ----------------------------------

def test_estimator_recovers_a_known_curve_and_needs_two_arms():
    import numpy as np

    from exporters.propensity import NoInterventions, estimate

    truth = [1.0, 0.6, 0.45, 0.3, 0.2]
    rng = np.random.default_rng(7)
    log, moved = [], 0
    for q in range(300):
        docs = [f"d{q}-{i}" for i in range(5)]
        relevance = dict(zip(docs, rng.uniform(0.1, 0.9, 5)))
        arm_b = list(rng.permutation(docs))  # the other arm ranks the same documents differently
        moved += sum(a != b for a, b in zip(docs, arm_b))
        for arm, shown in (("a", docs), ("b", arm_b)):
            for _ in range(20):
                clicked = {k for k, d in enumerate(shown, 1) if rng.random() < truth[k - 1] * relevance[d]}
                log.append((arm, f"q{q}", shown, clicked))
    curve = estimate(log, bootstrap=200, seed=1)
    assert curve.propensity[0] == 1.0 and curve.interventions == moved
    for k in range(1, 5):
        assert curve.propensity[k] == pytest.approx(truth[k], rel=0.12)
        assert curve.low[k] < curve.propensity[k] < curve.high[k] and curve.high[k] - curve.low[k] < 0.2
    # 95% intervals: with four of them, one may miss the truth; two would say they are too narrow
    assert sum(not curve.low[k] <= truth[k] <= curve.high[k] for k in range(1, 5)) <= 1
    assert curve.value(7) == curve.propensity[4]  # beyond the deepest position: the last estimate
    # one arm showing a document at two positions is not an intervention: the arm is not randomized per search
    one_arm = [("a", "q", ["x", "y"], {1}), ("a", "q", ["y", "x"], {1})]
    with pytest.raises(NoInterventions, match="no \\(query, doc\\) shown at two positions by different arms"):
        estimate(one_arm)
