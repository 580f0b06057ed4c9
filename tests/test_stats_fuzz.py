"""Fuzzing (issue 11, point 4): no JSON document and no numbers make the engine raise.

Three properties, each over hypothesis-generated inputs (derandomized, so a run is reproducible):
  * parse_sums + analyze: SumsFormatError (with a JSON path) or an analysis whose to_dict() is strict JSON;
  * the `abgate stats` CLI function: exit code 0 or 2, strict JSON on stdout with --json, no traceback;
  * every test function on arbitrary statistics (inf, NaN, negative or fractional n, 1e-300 and 1e300 sums):
    a result, and an ok result has finite numbers with ci_low <= ci_high.
"""

import contextlib
import io
import json
import math
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.stats import (
    CupedStatistic, Estimate, Proportion, RatioStatistic, SampleMean, analyze, cuped_test,
    probability_to_beat_control, proportion_z_test, sequential_test, welch_t_test, z_test,
)
from experiments.stats.sums_file import FIELDS, SumsFormatError, parse_sums
from gateway.cli import main

FUZZ = settings(max_examples=250, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EXTREMES = [0, 1, -1, 2, 0.5, 1e-90, -1e-90, 1e-300, 5e-324, 1e150, 1e300, 1.7e308, 10**20, 10**400]
numbers = st.one_of(
    st.sampled_from(EXTREMES),
    st.integers(-5, 10_000),
    st.floats(min_value=-1e6, max_value=1e6),
    st.floats(allow_nan=True, allow_infinity=True),
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=4)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6,
)


@st.composite
def plausible_arm(draw, kind: str):
    """Sums that real data could give, so the engine's numeric paths (not only its checks) are fuzzed."""
    n = draw(st.one_of(st.integers(2, 20_000), st.sampled_from([0, 1, 2])))
    mean = draw(st.one_of(st.floats(0.001, 50), st.sampled_from([0.0, 1e-90, 1e-12, 1.0, 1e12])))
    spread = draw(st.one_of(st.floats(0.01, 100), st.just(0.0)))
    if kind == "proportion":
        return {"n": n, "successes": draw(st.one_of(st.integers(0, n), st.just(0)))}
    sums = {"n": n, "sum": n * mean, "sum_squares": n * (mean * mean + spread * mean * mean)}
    if kind == "mean":
        return sums
    if kind == "ratio":
        return {"n": n, "m_sum": sums["sum"], "m_sum_squares": sums["sum_squares"], "d_sum": 3.0 * n,
                "d_sum_squares": 10.0 * n, "md_sum": 3.1 * sums["sum"]}
    return {"n": n, "y_sum": sums["sum"], "y_sum_squares": sums["sum_squares"], "x_sum": sums["sum"],
            "x_sum_squares": sums["sum_squares"], "xy_sum": 0.9 * sums["sum_squares"]}


@st.composite
def any_arm(draw, kind: str):
    """Every field a random number (extremes, NaN, huge integers): the statistics' own checks are fuzzed."""
    return {name: draw(numbers) for name in FIELDS[kind]}


def _rarely(draw) -> bool:
    # hypothesis favours small integers, so "== 9" comes up about one time in ten or less
    return draw(st.integers(0, 9)) == 9


@st.composite
def valid_documents(draw):
    arms = draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True))
    metrics = {}
    for name in draw(st.lists(st.sampled_from(["m1", "m2", "m3"]), min_size=1, max_size=3, unique=True)):
        kind = draw(st.sampled_from(sorted(FIELDS)))
        metrics[name] = {"kind": kind, "relative": draw(st.booleans()),
                         "arms": {arm: draw(any_arm(kind) if _rarely(draw) else plausible_arm(kind))
                                  for arm in arms}}
    doc = {"control": draw(st.sampled_from(arms + arms + ["z"])), "metrics": metrics,
           "settings": {"alpha": draw(st.sampled_from([0.05, 0.01, 0.2])), "sequential": draw(st.booleans()),
                        "tuning": draw(st.sampled_from([1, 5_000, 1e12])),
                        "correction": draw(st.sampled_from(["holm", "bh", "none"]))}}
    if draw(st.booleans()):
        doc["units"] = {arm: draw(numbers if _rarely(draw) else st.integers(0, 10**6)) for arm in arms}
        doc["weights"] = {arm: draw(numbers if _rarely(draw) else st.sampled_from([1, 50])) for arm in arms}
    return doc


def _places(value, path=()):
    """Every (path, value) inside a JSON document, the root included."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _places(item, path + (index,))


@st.composite
def documents(draw):
    """A valid document, then (two times in three) one to three places replaced by any JSON value or deleted:
    wrong types anywhere, missing keys, unhashable values where a name belongs."""
    doc = draw(valid_documents())
    for _ in range(draw(st.sampled_from([0, 1, 1, 2, 3]))):
        if draw(st.integers(0, 19)) == 19:
            return draw(json_values)
        places = list(_places(doc))[1:]
        path, _ = places[draw(st.integers(0, len(places) - 1))]
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.integers(0, 4)) == 0:
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    return doc


def _strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"non-finite number {constant} in the output")
    return json.loads(text, parse_constant=refuse)


def _check_lift(result) -> None:
    if result is None or not result.ok:
        return
    numbers = (result.lift, result.ci_low, result.ci_high, result.p_value, result.standard_error)
    assert all(v is not None and math.isfinite(v) for v in numbers), result
    assert result.ci_low <= result.ci_high and 0 <= result.p_value <= 1
    assert result.precise in (True, False)


@FUZZ
@given(documents())
def test_parse_and_analyze_never_raise(document):
    try:
        doc = parse_sums(document)
    except SumsFormatError as exc:
        assert exc.path.startswith("$") and exc.message.endswith(".")
        return
    analysis = analyze(doc.control, doc.metrics, doc.specs, units=doc.units, weights=doc.weights,
                       settings=doc.settings)
    _strict_json(json.dumps(analysis.to_dict()))
    for comparison in analysis.comparisons:
        _check_lift(comparison.fixed)
        _check_lift(comparison.sequential)


def _cli(document, *flags) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with mock.patch("sys.stdin", io.StringIO(json.dumps(document))), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = main(["stats", "--input", "-", *flags])
    return code, out.getvalue(), err.getvalue()


@settings(FUZZ, max_examples=120)
@given(documents(), st.booleans())
def test_cli_never_raises(document, as_json):
    code, out, err = _cli(document, *(["--json"] if as_json else []))
    assert code in (0, 2)
    assert "Traceback" not in err
    if code == 2:
        assert err.startswith("abgate: error: <stdin>: ")
    if as_json:
        _strict_json(out)


STATISTICS = {
    "mean": st.builds(SampleMean, numbers, numbers, numbers),
    "proportion": st.builds(Proportion, numbers, numbers),
    "ratio": st.builds(RatioStatistic, numbers, numbers, numbers, numbers, numbers, numbers),
    "estimate": st.builds(Estimate, numbers, numbers, numbers),
}
TESTS = [welch_t_test, z_test, proportion_z_test, sequential_test]


@FUZZ
@given(st.sampled_from(sorted(STATISTICS)).flatmap(lambda kind: st.tuples(STATISTICS[kind], STATISTICS[kind])),
       st.booleans(), st.floats(1e-6, 0.5), st.one_of(st.sampled_from([1.0, 5_000.0, 1e300]), st.floats(1e-3, 1e9)))
def test_every_test_returns_a_result_on_any_numbers(arms, relative, alpha, tuning):
    control, treatment = arms
    for test in TESTS:
        kwargs = {"tuning": tuning} if test is sequential_test else {}
        if test is proportion_z_test and not isinstance(control, Proportion):
            continue
        _check_lift(test(control, treatment, relative=relative, alpha=alpha, **kwargs))
    bayes = probability_to_beat_control(control, treatment, relative=relative)
    _strict_json(json.dumps(bayes.to_dict()))


@FUZZ
@given(st.builds(CupedStatistic, numbers, numbers, numbers, numbers, numbers, numbers),
       st.builds(CupedStatistic, numbers, numbers, numbers, numbers, numbers, numbers), st.booleans(),
       st.sampled_from(["welch_t", "z", "sequential"]))
def test_cuped_returns_a_result_on_any_numbers(control, treatment, relative, test):
    _check_lift(cuped_test(control, treatment, relative=relative, test=test))


@pytest.mark.parametrize("document,where", [
    ({"control": "a", "metrics": {"m": {"kind": ["mean"], "arms": {}}}}, "$.metrics.m.kind"),
    ({"control": "a", "settings": {"correction": ["holm"]}, "metrics": {}}, "$.settings.correction"),
    ({"control": "a", "metrics": {"m": {"kind": {"x": 1}, "arms": {}}}}, "$.metrics.m.kind"),
    ({"control": "a", "metrics": {"m": {"kind": "mean", "arms": {"a": {"n": 10**400, "sum": 1, "sum_squares": 1}}}}},
     "$.metrics.m.arms.a.n"),
    ({"control": "a", "settings": {"alpha": 0.1, "power": 0.05}, "metrics": {}}, "$.settings.power"),
    ({"control": "a", "settings": {"tuning": 1e-300}, "metrics": {}}, "$.settings.tuning"),
])
def test_wrong_types_are_refused_with_their_json_path(document, where):
    """The crashes of issue 11 (unhashable lists as kind or correction, a 401-digit n) and settings the
    engine cannot use are SumsFormatErrors that name the place."""
    with pytest.raises(SumsFormatError) as caught:
        parse_sums(document)
    assert caught.value.path == where


def test_the_crashes_from_the_issue_are_results():
    tiny = {"control": "a", "metrics": {"m": {"kind": "mean", "arms": {
        "a": {"n": 100, "sum": 1e-88, "sum_squares": 50.0}, "b": {"n": 100, "sum": 5.0, "sum_squares": 60.0}}}}}
    code, out, _ = _cli(tiny, "--json")
    fixed = _strict_json(out)["comparisons"][0]["fixed"]
    assert code == 0 and fixed["error"] == "insufficient_data"
    huge = {"control": "a", "metrics": {"m": {"kind": "mean", "arms": {
        "a": {"n": 100, "sum": 1e300, "sum_squares": 1e300}, "b": {"n": 100, "sum": 5.0, "sum_squares": 60.0}}}}}
    code, out, _ = _cli(huge, "--json")
    assert code == 0 and _strict_json(out)["comparisons"][0]["fixed"]["error"] == "invalid_statistic"
