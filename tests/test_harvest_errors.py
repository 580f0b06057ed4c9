"""`abgate harvest` and `abgate finetune --pairs` on bad input, on small logs written straight into a real
embedded store (no model, no gateway): an empty window, clicks without interventions, interventions without a
click, a pairs file from another corpus. Each is a one-line message naming what and where, exit code 2, no
traceback; the fall-backs happen only when a flag asks for them. The same cases on a real gateway's log are in
tests/test_harvest.py."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import msgspec
import pytest

from event_samples import START
from gateway import cli
from gateway.eventlog.events import COLUMNS, Feedback, Impression, new_event_id
from cli_errors import one_line_error


def write_log(folder: Path, searches: list[tuple[str, str, str, list[str], list[int]]]) -> str:
    """searches: (experiment, arm, unit, doc_ids, clicked positions), all for the query 'q one'; each click
    gets a long dwell (a satisfied click). Returns the store's DSN."""
    from gateway.eventlog import tables
    from gateway.eventlog.store import connect

    dsn = f"chdb://{folder}"
    impressions, feedback = [], []
    for i, (experiment, arm, unit, docs, clicked) in enumerate(searches):
        ts = START + timedelta(seconds=i)
        imp = Impression(new_event_id(), ts, experiment, arm, unit, bool(experiment), "q one", docs,
                         [1.0 - 0.01 * k for k in range(len(docs))], 3.0, "enc", f"index-{arm}")
        impressions.append(imp)
        for position in clicked:
            for kind, value in (("click", 1.0), ("dwell", 60.0)):
                feedback.append(Feedback(new_event_id(), imp.impression_id, ts + timedelta(seconds=1), experiment,
                                         arm, unit, kind, docs[position - 1], position, value))
    with connect(dsn) as client:
        tables.migrate(client)
        for events in (impressions, feedback):
            if events:
                cls = type(events[0])
                client.insert("impressions" if cls is Impression else "feedback",
                              [msgspec.structs.astuple(e) for e in events], column_names=list(COLUMNS[cls]))
    return dsn


def harvest(dsn: str, out: Path, *extra: str, capsys) -> tuple[int, str, str]:
    code = cli.main(["harvest", "--dsn", dsn, "--out", str(out), "--no-exclude", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_an_empty_window_says_so(tmp_path, capsys):
    dsn = write_log(tmp_path / "store", [])
    one_line_error(*harvest(dsn, tmp_path / "p.jsonl", capsys=capsys)[::2], "no impressions in the window",
                   "--since")
    assert not (tmp_path / "p.jsonl").exists()


def test_clicks_without_interventions_fall_back_only_by_flag(tmp_path, capsys):
    # one arm only: every document always at the same position
    dsn = write_log(tmp_path / "store", [("exp", "a", f"u{i}", ["x", "y", "z"], [1] if i % 2 else [2])
                                         for i in range(20)])
    out = tmp_path / "p.jsonl"
    one_line_error(*harvest(dsn, out, capsys=capsys)[::2], "propensities cannot be estimated",
                   "no (query, doc) shown at two positions by different arms", "--no-ipw", "--assume-eta")
    assert not out.exists()
    code, _, err = harvest(dsn, out, "--no-ipw", capsys=capsys)
    assert code == 0 and "propensities cannot be estimated" not in err
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["weights"]["kind"] == "naive" and meta["propensities"] is None
    code, _, err = harvest(dsn, out, "--assume-eta", "1", capsys=capsys)
    assert code == 0 and "assuming 1/position^1" in err
    meta = json.loads(Path(str(out) + ".meta.json").read_text())
    assert meta["propensities"]["method"].startswith("assumed") and meta["weights"]["kind"] == "ipw"
    rows = {r["positive"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["y"]["weight"] == pytest.approx(2.0 * rows["y"]["provenance"]["clicks"])  # 1 / (1/2)


def test_interventions_without_a_click_on_them_say_so(tmp_path, capsys):
    # two arms swap x and y, but only z (never moved) is clicked
    searches = [("exp", "a" if i % 2 else "b", f"u{i}", ["x", "y", "z"] if i % 2 else ["y", "x", "z"], [3])
                for i in range(20)]
    dsn = write_log(tmp_path / "store", searches)
    one_line_error(*harvest(dsn, tmp_path / "p.jsonl", capsys=capsys)[::2], "propensities cannot be estimated",
                   "none of them was clicked")


def test_default_traffic_is_no_intervention(tmp_path, capsys):
    """Impressions outside any experiment (not enrolled) are not randomized: they never count as one."""
    searches = [("", "default", f"u{i}", ["x", "y"] if i % 2 else ["y", "x"], [1]) for i in range(20)]
    dsn = write_log(tmp_path / "store", searches)
    one_line_error(*harvest(dsn, tmp_path / "p.jsonl", capsys=capsys)[::2], "propensities cannot be estimated")


def test_arms_of_two_experiments_are_told_apart_and_the_curve_is_written(tmp_path, capsys):
    """Two experiments that both call an arm 'a' still make interventions between them; the manifest keeps
    the curve with intervals and the evidence behind it."""
    searches = []
    for i in range(200):
        first = i % 2 == 0
        docs = ["x", "y", "z"] if first else ["y", "z", "x"]
        clicked = [1] if i % 4 in (0, 1) else ([2] if i % 8 in (2, 3) else [])
        searches.append(("e1" if first else "e2", "a", f"u{i}", docs, clicked))
    dsn = write_log(tmp_path / "store", searches)
    code, out, err = harvest(dsn, tmp_path / "p.jsonl", "--bootstrap", "20", capsys=capsys)
    assert code == 0, err
    curve = json.loads((tmp_path / "p.jsonl.meta.json").read_text())["propensities"]
    assert curve["interventions"] == 3 and curve["clicks"] > 0 and curve["bootstrap"] == 20
    assert curve["positions"]["1"]["propensity"] == 1.0 and curve["positions"]["2"]["propensity"] is not None
    assert "propensity by position" in out


def test_pairs_from_another_corpus_are_refused_before_training(tmp_path, capsys):
    searches = [("exp", "a" if i % 2 else "b", f"u{i}", ["x", "y"] if i % 2 else ["y", "x"], [1, 2])
                for i in range(40)]
    dsn = write_log(tmp_path / "store", searches)
    pairs = tmp_path / "p.jsonl"
    code, _, err = harvest(dsn, pairs, "--bootstrap", "10", capsys=capsys)
    assert code == 0, err
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": d, "text": f"document {d}"}) + "\n" for d in ("p", "q", "r")))
    code = cli.main(["finetune", str(tmp_path / "model"), "--pairs", str(pairs), "--corpus", str(corpus)])
    one_line_error(code, capsys.readouterr().err, "another corpus", "--corpus")
    assert not (tmp_path / "model").exists()
