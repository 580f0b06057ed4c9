"""Impossible inputs come back as results with a stable error code and a reason -- never NaN, never a raise."""

import json
import math

import pytest

from experiments.stats import (
    CupedStatistic, ErrorCode, MetricSpec, Proportion, RatioStatistic, SampleMean, AnalysisSettings, analyze,
    probability_to_beat_control, proportion_z_test, sequential_test, srm_check, welch_t_test, z_test,
)
from experiments.stats.cuped import cuped_test

GOOD = SampleMean(100, 50.0, 60.0)
TESTS = [welch_t_test, z_test, sequential_test, lambda c, t, **kw: cuped_test(_as_cuped(c), _as_cuped(t), **kw)]


def _as_cuped(stat: SampleMean) -> CupedStatistic:
    return CupedStatistic(stat.n, stat.sum, stat.sum_squares, stat.sum, stat.sum_squares, stat.sum_squares)


def _no_nan(value) -> None:
    """Walk a to_dict() tree: every number is finite (JSON cannot carry NaN, and a verdict must not show one)."""
    if isinstance(value, dict):
        for item in value.values():
            _no_nan(item)
    elif isinstance(value, list):
        for item in value:
            _no_nan(item)
    elif isinstance(value, float):
        assert math.isfinite(value)


@pytest.mark.parametrize("test", TESTS)
@pytest.mark.parametrize("bad,code", [
    (SampleMean(0, 0.0, 0.0), ErrorCode.NO_UNITS),
    (SampleMean(1, 3.0, 9.0), ErrorCode.TOO_FEW_UNITS),
    (SampleMean(10, 10.0, 1.0), ErrorCode.INVALID_STATISTIC),      # sum_squares < sum^2 / n
    (SampleMean(10, float("nan"), 1.0), ErrorCode.INVALID_STATISTIC),
    (SampleMean(-3, 1.0, 1.0), ErrorCode.INVALID_STATISTIC),
])
def test_bad_arm_gives_error_code(test, bad, code):
    for control, treatment in ((bad, GOOD), (GOOD, bad)):
        result = test(control, treatment)
        assert result.error == code and result.reason
        assert result.p_value is None and result.lift is None and result.significant is None
        _no_nan(result.to_dict())


def test_zero_variance_and_zero_control_mean():
    constant = SampleMean(50, 50.0, 50.0)
    assert welch_t_test(constant, constant).error == ErrorCode.ZERO_VARIANCE
    assert proportion_z_test(Proportion(10, 0), Proportion(10, 0)).error == ErrorCode.ZERO_VARIANCE
    zeros = SampleMean(50, 0.0, 0.0)
    assert welch_t_test(zeros, GOOD, relative=True).error == ErrorCode.ZERO_CONTROL_MEAN
    assert welch_t_test(zeros, GOOD).ok                       # absolute lift is still fine
    assert probability_to_beat_control(constant, constant).error == ErrorCode.ZERO_VARIANCE


def test_ratio_and_proportion_specific_errors():
    assert z_test(RatioStatistic(10, 1, 1, 0, 0, 0), RatioStatistic(10, 1, 1, 5, 5, 1)).error == ErrorCode.ZERO_DENOMINATOR
    assert proportion_z_test(Proportion(10, 11), Proportion(10, 3)).error == ErrorCode.INVALID_STATISTIC


def test_variance_rounding_is_not_an_error():
    # A million identical values of 0.1 summed in floating point can leave sum_squares a hair below
    # sum^2/n; that is rounding (variance 0), not sums that no data could produce.
    n = 1_000_000
    stat = SampleMean(n, 0.1 * n, 0.01 * n * (1 - 1e-13))
    assert stat.problem() is None and stat.variance == 0.0


def test_srm_errors():
    assert srm_check({}, {"a": 1, "b": 1}).error == ErrorCode.NO_UNITS
    assert srm_check({"a": 5, "b": 5}, {"a": 1}).error == ErrorCode.INVALID_WEIGHTS
    assert srm_check({"a": 5}, {"a": 1, "b": 0}).error == ErrorCode.INVALID_WEIGHTS
    missing_arm = srm_check({"a": 5000}, {"a": 1, "b": 1})    # an arm that gets no units is itself an SRM
    assert missing_arm.alert is True and missing_arm.observed == {"a": 5000, "b": 0}


def test_analyze_reports_missing_arm_and_keeps_other_results():
    metrics = {
        "ctr": {"c": RatioStatistic(2000, 830, 1950, 8100, 41200, 4420),
                "t": RatioStatistic(2040, 905, 2140, 8150, 41800, 4790)},
        "dwell": {"c": GOOD},                                          # no treatment sums
        "clicks": {"t": GOOD},                                         # no control sums
    }
    specs = {"ctr": MetricSpec("ctr", "ratio"), "dwell": MetricSpec("dwell", "mean"),
             "clicks": MetricSpec("clicks", "mean")}
    analysis = analyze("c", metrics, specs, units={"c": 2000, "t": 2040}, weights={"c": 1, "t": 1},
                       settings=AnalysisSettings(sequential=True, correction="bh"))
    by_metric = {c.metric: c for c in analysis.comparisons}
    assert by_metric["ctr"].decision.ok and by_metric["ctr"].adjusted_p_value is not None
    for name in ("dwell", "clicks"):
        assert by_metric[name].decision.error == ErrorCode.MISSING_ARM
        assert by_metric[name].significant is None
    document = analysis.to_dict()
    _no_nan(document)
    json.dumps(document, allow_nan=False)
    assert analysis.srm.alert is False


def test_programmer_errors_raise():
    with pytest.raises(ValueError):
        welch_t_test(GOOD, GOOD, alpha=1.5)
    with pytest.raises(ValueError):
        MetricSpec("x", "median")
    with pytest.raises(ValueError):
        AnalysisSettings(correction="bonferroni")
