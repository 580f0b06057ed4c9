"""Experiment YAML: the examples are valid; every mistake is reported with file, line and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.loader import ExperimentsInvalid, load_folder
from experiments.state import ExperimentState
from gateway.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments" / "examples"
GOOD = (EXAMPLES / "finetune-vs-baseline.yaml").read_text()


def errors_for(tmp_path: Path, text: str, name: str = "exp.yaml") -> list[tuple[int | None, str | None, str]]:
    (tmp_path / name).write_text(text)
    with pytest.raises(ExperimentsInvalid) as info:
        load_folder(tmp_path)
    return [(e.line, e.field, e.message) for e in info.value.errors]


def test_examples_are_valid():
    loaded = load_folder(EXAMPLES)
    exp = loaded.experiments["finetune-vs-baseline"]
    assert exp.control == "baseline" and [a.name for a in exp.arms] == ["baseline", "finetuned"]
    assert exp.design.sequential and exp.metrics.guardrails[0].max_relative_increase == 0.2
    assert loaded.experiments["matryoshka-256"].arms[1].dimensions == 256


def test_wrong_values_point_at_their_line_and_field(tmp_path):
    text = (GOOD.replace("allocation: 1.0", "allocation: 1.5")
                .replace("unit: user ", "unit: device")
                .replace("weight: 50, encoder: artifacts/encoders/finetuned",
                         "weight: -1, encoder: artifacts/encoders/finetuned"))
    found = errors_for(tmp_path, text)
    lines = text.splitlines()
    by_field = {f: (line, msg) for line, f, msg in found}
    assert set(by_field) == {"allocation", "unit", "arms[1].weight"}
    assert lines[by_field["allocation"][0] - 1].startswith("allocation:")
    assert lines[by_field["unit"][0] - 1].startswith("unit:")
    assert "finetuned" in lines[by_field["arms[1].weight"][0] - 1]
    assert "(0, 1]" in by_field["allocation"][1]


def test_missing_field_and_unknown_field_and_bad_control(tmp_path):
    text = GOOD.replace("owner: search-relevance\n", "").replace("control: baseline", "control: basline")
    text = text.replace("design: {", "desing: {")
    found = {f: (line, msg) for line, f, msg in errors_for(tmp_path, text)}
    first_field = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("name:"))
    assert "is required" in found["owner"][1] and found["owner"][0] == first_field  # the mapping that lacks it
    assert "not a known field" in found["desing"][1]
    assert "is required" in found["design"][1]
    assert "not one of the arms" in found["control"][1]


def test_yaml_syntax_error_has_the_line(tmp_path):
    found = errors_for(tmp_path, "name: x\narms: [\n  {name: a\n")
    assert found[0][1] == "yaml" and found[0][0] in (3, 4)


def test_duplicate_keys_and_names_and_overlapping_layers(tmp_path):
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("salt: ftvb-2026-11", "salt: other"))
    (tmp_path / "c.yaml").write_text(GOOD.replace("name: finetune-vs-baseline", "name: second")
                                         + "layer_buckets: [0, 5000]\n")
    (tmp_path / "d.yaml").write_text(GOOD.replace("owner: search-relevance", "owner: a\nowner: b")
                                         .replace("name: finetune-vs-baseline", "name: fourth")
                                         .replace("status: running", "status: draft"))
    with pytest.raises(ExperimentsInvalid) as info:
        load_folder(tmp_path)
    found = [(Path(e.file).name, e.line, e.field, e.message) for e in info.value.errors]
    second_owner = (tmp_path / "d.yaml").read_text().splitlines().index("owner: b") + 1
    assert ("d.yaml", second_owner, "owner") in [f[:3] for f in found]
    assert any(f[0] == "b.yaml" and f[2] == "name" and "unique" in f[3] for f in found)
    overlap = [f for f in found if f[2] == "layer_buckets"]
    assert overlap and overlap[0][0] in ("b.yaml", "c.yaml") and "disjoint" in overlap[0][3]
    c_lines = (tmp_path / "c.yaml").read_text().splitlines()
    c_overlap = [f for f in overlap if f[0] == "c.yaml"]
    assert all(c_lines[f[1] - 1].startswith("layer_buckets") for f in c_overlap)


def test_state_guard_refuses_weight_change_unless_forced(tmp_path):
    folder = tmp_path / "exps"
    folder.mkdir()
    (folder / "e.yaml").write_text(GOOD)
    state = ExperimentState.load(tmp_path / "state.json")
    state.record(list(load_folder(folder, state=state).experiments.values()))
    (folder / "e.yaml").write_text(GOOD.replace("weight: 50, encoder: artifacts/encoders/baseline",
                                                "weight: 70, encoder: artifacts/encoders/baseline"))
    with pytest.raises(ExperimentsInvalid) as info:
        load_folder(folder, state=ExperimentState.load(tmp_path / "state.json"))
    assert info.value.errors[0].field == "arms" and "break the analysis" in info.value.errors[0].message
    assert info.value.errors[0].line == GOOD.splitlines().index("arms:") + 1
    load_folder(folder, state=ExperimentState.load(tmp_path / "state.json"), force=True)


def test_validate_command_json_and_exit_codes(tmp_path, capsys):
    assert main(["experiments", "validate", str(EXAMPLES), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["valid"] is True
    bad = tmp_path / "bad"
    shutil.copytree(EXAMPLES, bad)
    (bad / "broken.yaml").write_text(GOOD.replace("name: finetune-vs-baseline", "name: broken")
                                     .replace("top_k: 10}\n  - {name: finetuned", "top_k: 0}\n  - {name: finetuned"))
    assert main(["experiments", "validate", str(bad), "--json"]) == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["valid"] is False
    assert report["errors"][0]["field"] == "arms[0].top_k" and report["errors"][0]["line"] == 15
    assert f"{bad / 'broken.yaml'}:15: arms[0].top_k: is 0" in captured.err
    assert main(["experiments", "validate", str(tmp_path / "missing")]) == 2
