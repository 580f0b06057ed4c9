"""`make loop` (gateway/simulation/loop.py): its inputs, the experiment it serves, what it hands harvest and
finetune, and how it scores the candidates. The whole loop (minutes of fine-tuning) is measured in docs/loop.md,
not run here; tests/test_harvest.py runs harvest and finetune --pairs on a real gateway's log."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from experiments.loader import load_file
from gateway.simulation import loop
from gateway.simulation.steps import Context
from cli_errors import one_line_error as _one_line_error


def beir(folder: Path, splits=("train", "test")) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "a document"}) + "\n")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in
                                                  (("1", "train  query"), ("2", "test query"), ("3", "other"))))
    rows = {"train": "1\td1\t1\n", "test": "2\td1\t1\n"}
    for split in splits:
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows[split])
    return folder


def one_line_error(code: int, err: str, *fragments: str) -> None:
    _one_line_error(code, err, *fragments, prog="abgate loop")  # loop's own entry point names itself


def test_bad_data_and_settings_are_one_line_errors(tmp_path, capsys):
    one_line_error(loop.main(["--data", str(tmp_path / "nowhere"), "--workdir", str(tmp_path)]),
                   capsys.readouterr().err, "--data", "corpus.jsonl is missing")
    no_train = beir(tmp_path / "no-train", splits=("test",))
    one_line_error(loop.main(["--data", str(no_train), "--workdir", str(tmp_path)]), capsys.readouterr().err,
                   "qrels/train.tsv is missing", "train judgments")
    one_line_error(loop.main(["--data", str(beir(tmp_path / "ok")), "--users", "0", "--workdir", str(tmp_path)]),
                   capsys.readouterr().err, "--users", "at least 1")


def test_the_served_experiment_is_valid_and_ranks_two_ways(tmp_path):
    path = tmp_path / "loop-ab.yaml"
    path.write_text(loop.EXPERIMENT.format(dims=loop.DIMENSIONS))
    experiment, errors = load_file(path)
    assert errors == [] and experiment.status == "running" and experiment.allocation == 1.0
    arms = {a.name: a for a in experiment.arms}
    assert set(arms) == {"baseline", f"m{loop.DIMENSIONS}"} and arms["baseline"].encoder == arms["m128"].encoder
    assert arms["m128"].dimensions == loop.DIMENSIONS and arms["baseline"].dimensions is None
    assert [a.weight for a in experiment.arms] == [50, 50]


def test_evaluation_queries_are_the_test_split_texts(tmp_path):
    data = beir(tmp_path / "data")
    out = tmp_path / "eval.txt"
    assert loop.evaluation_queries(data, out) == 1
    assert out.read_text() == "test query\n"


def test_harvest_and_finetune_are_handed_no_judgments(tmp_path, monkeypatch):
    """The loop gives harvest the log and a list of test query texts, and finetune the pairs and the corpus:
    no qrels path on either command line, the same pairs file for finetune as harvest wrote."""
    data = beir(tmp_path / "data")
    ctx = Context(tmp_path, data, {})
    (tmp_path / "artifacts" / "loop").mkdir(parents=True)
    calls = []

    def fake_cli(ctx, *args, env=None):
        calls.append(("cli", args))
        out = Path(args[args.index("--out") + 1])
        out.write_text('{"query": "q", "positive": "d1"}\n')
        return {"counts": {"pairs": 1, "queries": 1}, "weights": {"kind": "ipw"}, "propensities": None}

    def fake_step(ctx, name, out, command, done):
        calls.append((name, command[3:]))

    monkeypatch.setattr(loop, "run_cli_json", fake_cli)
    monkeypatch.setattr(loop, "run_step", fake_step)
    monkeypatch.setattr(loop, "evaluate", lambda ctx, name, enc, idx: {"metrics": {"ndcg@10": 0.5}})
    for name in loop.VARIANTS:
        loop.candidate(ctx, name, [], ["--threads", "2"])
    harvests = [args for kind, args in calls if kind == "cli"]
    assert [a[0] for a in harvests] == ["harvest", "harvest"] and "--no-ipw" in harvests[1]
    assert all("--exclude-queries" in a and "--exclude-qrels" not in a for a in harvests)
    finetunes = {kind: args for kind, args in calls if kind.startswith("finetune")}
    assert set(finetunes) == {"finetune ipw", "finetune naive"}
    for name, args in finetunes.items():
        assert args[args.index("--pairs") + 1].endswith(f"pairs-{name.split()[1]}.jsonl")
        assert args[-2:] == ["--threads", "2"] and "--passes" in args
    every = " ".join(" ".join(map(str, args)) for _, args in calls)
    assert "qrels" not in every


def test_outcome_reports_both_candidates_and_the_top1_kept():
    def offline(ndcg, tops):
        return {"metrics": {"ndcg@10": ndcg, "recall@100": 0.9, "mrr@10": 0.6},
                "per_query": {q: {"top": t} for q, t in tops.items()}}

    baseline = offline(0.6451, {"1": ["a", "b"], "2": ["c", "d"], "3": ["e"], "4": ["f"]})
    harvest = {"counts": {"pairs": 10, "queries": 8}, "weights": {"kind": "ipw"},
               "propensities": {"positions": {"1": {"propensity": 1.0, "low": 1.0, "high": 1.0}}}}
    results = {"ipw": {"harvest": harvest, "offline": offline(0.6700, {"1": ["a"], "2": ["d"], "3": ["e"], "4": ["f"]})},
               "naive": {"harvest": harvest, "offline": offline(0.6500, {"1": ["b"], "2": ["d"], "3": ["e"], "4": []})}}
    out = loop.outcome({"searches": 100, "clicks": 20}, baseline, results)
    assert out["candidates"]["ipw"]["gain"] == pytest.approx(0.0249) and out["target_met"]
    assert out["candidates"]["ipw"]["top1_kept"] == 0.75
    assert out["candidates"]["naive"]["top1_kept"] == 0.25  # no result at all: the top-1 is not kept
    assert out["propensities"] == harvest["propensities"]
    loop.print_outcome(out)  # prints without error


def test_make_loop_calls_the_loop():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert "\nloop: venv\n" in makefile and "abgate loop" in makefile



@pytest.mark.parametrize("code, body, ok", [
    (0, {"searches": 36000, "failed_searches": 0, "failed_feedback": 0}, True),
    (1, {"searches": 36000, "failed_searches": 0, "failed_feedback": 1}, True),     # one reset connection
    (1, {"searches": 36000, "failed_searches": 400, "failed_feedback": 0}, False),  # a broken gateway
    (1, {"searches": 0, "failed_searches": 20}, False),
    (0, {"searches": 100, "stopped": "time limit of 1 s"}, False),
    (2, {}, False),
])
def test_simulate_tolerates_only_a_handful_of_failed_requests(code, body, ok, tmp_path, monkeypatch, capsys):
    class FakeChild:
        def __init__(self, command, ctx, **kwargs):
            assert command[3] == "simulate" and command[-1] == "--json"
            self.proc = SimpleNamespace(returncode=code)

        def communicate(self):
            return json.dumps(body) + "\n"

    monkeypatch.setattr(loop, "Child", FakeChild)
    ctx = Context(tmp_path, tmp_path, {})
    if ok:
        assert loop.simulate(ctx, "--users", "1") == body
        assert ("failed" in capsys.readouterr().err) == bool(body.get("failed_feedback"))
    else:
        with pytest.raises(loop.AbgateError, match="`abgate simulate` failed"):
            loop.simulate(ctx, "--users", "1")
