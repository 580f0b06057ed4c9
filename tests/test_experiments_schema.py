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


def _load(tmp_path: Path, content: str | bytes, name: str = "exp.yaml"):
    from experiments.loader import load_file

    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return load_file(path)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")) + GOOD


@pytest.mark.parametrize("content, field, words", [
    (GOOD.replace("start: 2026-11-01T00:00:00Z", "start: 2026-13-45"), "start", "month must be in 1..12"),
    (GOOD.replace("start: 2026-11-01T00:00:00Z", "start: 2026-02-30T00:00:00Z"), "start", "not a real date"),
    (GOOD.replace("start: 2026-11-01T00:00:00Z", "start: 0001-01-01T00:00:00Z"), "start", "between 1970"),
    (GOOD.replace("start: 2026-11-01T00:00:00Z", "start: !!timestamp soon"), "start", "not a real date"),
    (GOOD.replace("allocation: 1.0 ", 'allocation: !!float "" '), "allocation", "cannot be read as a number"),
    (GOOD.replace("allocation: 1.0 ", "allocation: .nan "), "allocation", "finite"),
    (GOOD.replace("allocation: 1.0 ", "allocation: 1e0 "), "allocation", "1.0e+6"),
    (GOOD.replace("mde: 0.02", "sample_size: " + "9" * 5000), "design.sample_size", "4,300 digits"),
    (GOOD.replace("owner: search-relevance", "owner:\tx\n\towner: y"), "yaml", "valid YAML"),
    (GOOD + "---\n" + GOOD, "yaml", "one experiment per file"),
    (GOOD.replace("salt: ftvb-2026-11", "salt: !!binary aGVsbG8="), "salt", "binary data"),
    (GOOD.replace("salt: ftvb-2026-11", "salt: !!python/name:os.system"), "salt", "cannot hold"),
    (GOOD.replace("salt: ftvb-2026-11", "salt: &s [*s]"), "yaml", "nests deeper"),
    (BOMB, "yaml", "anchors and aliases"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "yaml", "nests deeper"),
    ("- a\n- b\n", None, "must be a mapping of fields, got a list"),
    ("just text\n", None, "must be a mapping of fields, got a string"),
    ("", None, "is empty"),
    (b"name: caf\xe9\n", None, "not UTF-8"),
    ("name: a\x00b\n", "yaml", "does not allow"),
    (GOOD.replace("owner: search-relevance", "owner: a\nowner: b"), "owner", "given twice"),
])
def test_no_yaml_input_ends_in_a_traceback(tmp_path, content, field, words):
    experiment, errors = _load(tmp_path, content)
    assert experiment is None and errors
    error = next((e for e in errors if words in e.message), None)
    assert error is not None, [e.located() for e in errors]
    assert error.field == field and "\n" not in error.located() and len(error.message) < 400


def test_unquoted_impossible_date_exits_2_with_file_line_field(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text(GOOD.replace("start: 2026-11-01T00:00:00Z", "start: 2026-13-45"))
    assert main(["experiments", "validate", str(tmp_path)]) == 2
    line = GOOD.splitlines().index("start: 2026-11-01T00:00:00Z") + 1
    assert capsys.readouterr().err.startswith(f"abgate: error: {tmp_path / 'e.yaml'}:{line}: start: '2026-13-45'")


def test_a_date_without_time_is_midnight_utc(tmp_path):
    experiment, errors = _load(tmp_path, GOOD.replace("start: 2026-11-01T00:00:00Z", "start: 2026-11-01"))
    assert not errors and experiment.start.isoformat() == "2026-11-01T00:00:00+00:00"


def test_unknown_metric_names_are_refused(tmp_path):
    text = (GOOD.replace("primary: ctr", "primary: nonexistent")
                .replace("secondary: [click_share,", "secondary: [ctrr,")
                .replace("{metric: latency_p95,", "{metric: bogus,"))
    found = {f: msg for _, f, msg in errors_for(tmp_path, text)}
    assert set(found) == {"metrics.primary", "metrics.secondary[0]", "metrics.guardrails[0].metric"}
    assert "'nonexistent' is not a metric" in found["metrics.primary"] and "latency_p95" in found["metrics.primary"]
    assert "did you mean 'ctr'" in found["metrics.secondary[0]"]
    custom = text.replace("primary: nonexistent", "primary: revenue") + (
        "custom_metrics:\n  - {name: revenue, numerator: {event: conversion, aggregate: sum}}\n")
    found = {f: msg for _, f, msg in errors_for(tmp_path, custom)}
    assert "metrics.primary" not in found and "custom_metrics of this file: revenue" in found["metrics.secondary[0]"]


def test_typo_in_a_guardrail_margin_is_refused_not_ignored(tmp_path):
    text = GOOD.replace("max_relative_increase: 0.20", "max_relative_increse: 0.20")
    found = {f: msg for _, f, msg in errors_for(tmp_path, text)}
    assert "did you mean 'max_relative_increase'" in found["metrics.guardrails[0].max_relative_increse"]
    both = GOOD.replace("max_relative_increase: 0.20}", "max_relative_increase: 0.20, max_absolute_increase: 5}")
    found = {f: msg for _, f, msg in errors_for(tmp_path, both)}
    assert "keep one margin" in found["metrics.guardrails[0].max_absolute_increase"]


def test_guardrails_policy(tmp_path):
    assert load_folder(EXAMPLES).experiments["finetune-vs-baseline"].metrics.guardrails_policy == "block"
    experiment, errors = _load(tmp_path, GOOD.replace("metrics:\n", "metrics:\n  guardrails_policy: warn\n"))
    assert not errors and experiment.metrics.guardrails_policy == "warn"
    found = {f: msg for _, f, msg in errors_for(tmp_path, GOOD.replace("metrics:\n",
                                                                          "metrics:\n  guardrails_policy: soft\n"))}
    assert "block" in found["metrics.guardrails_policy"] and "warn" in found["metrics.guardrails_policy"]


@pytest.mark.parametrize("numerator, field, words", [
    ("{event: conversion, aggregate: sum, cap: 500}", None, None),
    ("{event: conversion, cap: 500}", "custom_metrics[0].numerator.cap", "aggregate: sum"),
    ("{event: conversion, aggregate: sum, cap: -1}", "custom_metrics[0].numerator.cap", "positive"),
    ("{event: conversion, aggregate: sum, cap: .inf}", "custom_metrics[0].numerator.cap", "positive"),
    ("{event: conversion, aggregate: sum, cap: yes}", "custom_metrics[0].numerator.cap", "positive"),
    ("{event: conversion, aggregate: sum, filters: [{field: [x], op: '=', value: 1}]}",
     "custom_metrics[0].numerator.filters[0].field", "cannot filter"),
    ("{event: conversion, aggregate: sum, 1: x, b: y}", "custom_metrics[0].numerator.1", "not a known field"),
])
def test_custom_metric_cap_and_odd_keys(tmp_path, numerator, field, words):
    text = GOOD + f"custom_metrics:\n  - {{name: conversion_value, numerator: {numerator}}}\n"
    experiment, errors = _load(tmp_path, text)
    if field is None:
        assert not errors and experiment.custom_metrics[0].numerator.cap == 500.0
        return
    assert any(e.field == field and words in e.message for e in errors), [e.located() for e in errors]


def test_a_bare_equals_sign_says_to_quote_it(tmp_path):
    text = GOOD + ("custom_metrics:\n  - name: paid\n    numerator:\n      event: conversion\n"
                   "      filters: [{field: position, op: =, value: 1}]\n")
    experiment, (error,) = _load(tmp_path, text)
    assert error.field == "custom_metrics[0].numerator.filters[0].op" and 'quote it' in error.message
    assert error.line == len(text.splitlines())
