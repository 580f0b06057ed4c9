"""`abgate stats`: the documented example, JSON output, and bad input -> a located message with exit 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.stats import SampleMean, welch_t_test
from gateway.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "docs" / "examples" / "sums.json"


def run(capsys, *argv):
    code = main(["stats", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path, document) -> str:
    path = tmp_path / "sums.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def minimal(**overrides):
    doc = {"control": "a", "metrics": {"m": {"kind": "mean", "relative": False, "arms": {
        "a": {"n": 400, "sum": 210.5, "sum_squares": 480.25},
        "b": {"n": 410, "sum": 240.0, "sum_squares": 530.5}}}}}
    doc.update(overrides)
    return doc


def test_documented_example_table_and_json(capsys):
    code, out, _ = run(capsys, "--input", str(EXAMPLE))
    assert code == 0
    assert "SRM: p=0.08969" in out and "ctr" in out and "cuped_sequential" in out
    code, out, _ = run(capsys, "--input", str(EXAMPLE), "--json")
    analysis = json.loads(out)
    assert code == 0 and len(analysis["comparisons"]) == 5
    assert analysis["srm"]["p_value"] == pytest.approx(0.08968602177, abs=1e-10)
    assert {c["decision_method"] for c in analysis["comparisons"]} == {"sequential_cs", "cuped_sequential"}


def test_json_result_equals_engine(tmp_path, capsys):
    code, out, _ = run(capsys, "--input", write(tmp_path, minimal()), "--json")
    fixed = json.loads(out)["comparisons"][0]["fixed"]
    direct = welch_t_test(SampleMean(400, 210.5, 480.25), SampleMean(410, 240.0, 530.5))
    assert code == 0
    assert fixed["p_value"] == pytest.approx(direct.p_value, rel=1e-12)
    assert fixed["ci_low"] == pytest.approx(direct.ci_low, rel=1e-12)


def test_no_traffic_is_a_result_not_a_crash(tmp_path, capsys):
    doc = minimal()
    doc["metrics"]["m"]["arms"]["b"] = {"n": 0, "sum": 0, "sum_squares": 0}
    code, out, _ = run(capsys, "--input", write(tmp_path, doc), "--json")
    comparison = json.loads(out)["comparisons"][0]
    assert code == 0 and comparison["fixed"]["error"] == "no_units" and comparison["significant"] is None
    assert "NaN" not in out
    code, out, _ = run(capsys, "--input", write(tmp_path, doc))
    assert "no_units: The treatment arm" in out


@pytest.mark.parametrize("mutate,where", [
    (lambda d: d["metrics"]["m"]["arms"]["b"].update(n="many"), "$.metrics.m.arms.b.n"),
    (lambda d: d["metrics"]["m"]["arms"]["b"].update(n=2.5), "$.metrics.m.arms.b.n"),
    (lambda d: d["metrics"]["m"]["arms"]["b"].pop("sum_squares"), "$.metrics.m.arms.b.sum_squares"),
    (lambda d: d["metrics"]["m"].update(kind="median"), "$.metrics.m.kind"),
    (lambda d: d["metrics"]["m"].update(relative="yes"), "$.metrics.m.relative"),
    (lambda d: d["metrics"]["m"].update(arms=[1, 2]), "$.metrics.m.arms"),
    (lambda d: d.update(weights={"a": 1, "b": 1}), "$.weights"),
    (lambda d: d.update(settings={"alpha": 5}), "$.settings.alpha"),
    (lambda d: d.update(settings={"correction": "bonferroni"}), "$.settings.correction"),
    (lambda d: d.update(settings={"alhpa": 0.1}), "$.settings.alhpa"),
    (lambda d: d.pop("control"), "$.control"),
    (lambda d: d.update(metrics={}), "$.metrics"),
])
def test_bad_input_names_the_json_path(tmp_path, capsys, mutate, where):
    doc = minimal()
    mutate(doc)
    path = write(tmp_path, doc)
    code, out, err = run(capsys, "--input", path)
    assert code == 2
    assert err.startswith(f"abgate: error: {path}: {where}: ")
    assert "Traceback" not in err


def test_invalid_json_gives_line_and_missing_file(tmp_path, capsys):
    path = write(tmp_path, '{\n  "control": "a",\n  "metrics": {,}\n}')
    code, _, err = run(capsys, "--input", path)
    assert code == 2 and err.startswith(f"abgate: error: {path}:3: not valid JSON")
    code, _, err = run(capsys, "--input", str(tmp_path / "absent.json"))
    assert code == 2 and "cannot read the sums file" in err


def test_real_process_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "stats", "--input", write(tmp_path, "[]")],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2
    assert "$: expected a JSON object" in proc.stderr and "Traceback" not in proc.stderr
