"""Relative lift (issue 11): significance from the absolute difference, Fieller's interval, consistency of the
two, arms without events, tiny control means, and the precision rule. Cross-checks use scipy, statsmodels and
numpy on raw data; the A/A false-positive rates are in test_stats_aa.py."""

import json
import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportions_ztest

from experiments.stats import (
    AnalysisSettings, CupedStatistic, ErrorCode, MetricSpec, Proportion, RatioStatistic, SampleMean, analyze,
    cuped_test, probability_to_beat_control, proportion_z_test, sequential_test, welch_t_test, z_test,
)
from experiments.stats.precision import MAX_RELATIVE_STANDARD_ERROR, precision
from experiments.stats.sequential import boundary

ALPHA = 0.05
TESTS = {"welch_t": welch_t_test, "z": z_test, "proportion_z": proportion_z_test,
         "sequential": lambda c, t, **kw: sequential_test(c, t, tuning=20_000, **kw)}


def sample_mean(x: np.ndarray) -> SampleMean:
    return SampleMean(len(x), float(x.sum()), float((x * x).sum()))


# --- significance and interval, against scipy / statsmodels / numpy --------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_relative_welch_is_the_absolute_test_with_fieller_interval(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.lognormal(0.0, 1.0, 600 + 40 * seed), rng.lognormal(0.08, 1.1, 650)
    ours = welch_t_test(sample_mean(a), sample_mean(b), relative=True, alpha=0.1)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert ours.lift == pytest.approx(b.mean() / a.mean() - 1, rel=1e-12)
    # Fieller's bounds R are where Welch's statistic for "mu_b = R mu_a" -- scipy on the raw control scaled
    # by R -- reaches the critical t of the absolute test (its df).
    critical = stats.t.ppf(0.95, ref.df)
    for bound in (ours.ci_low, ours.ci_high):
        assert abs(stats.ttest_ind(b, (1 + bound) * a, equal_var=False).statistic) == pytest.approx(critical,
                                                                                                    rel=1e-9)
    # ... and the roots of the defining quadratic (t - R c)^2 = k^2 (Var t + R^2 Var c), by numpy.
    c, t = a.mean(), b.mean()
    vc, vt = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    roots = np.sort(np.roots([c * c - critical**2 * vc, -2 * t * c, t * t - critical**2 * vt]).real)
    assert (ours.ci_low, ours.ci_high) == pytest.approx(tuple(roots - 1), rel=1e-9)


def test_relative_proportion_uses_the_pooled_test():
    rng = np.random.default_rng(7)
    a, b = rng.random(6000) < 0.011, rng.random(6400) < 0.0085
    ours = proportion_z_test(Proportion(a.size, int(a.sum())), Proportion(b.size, int(b.sum())), relative=True)
    z, p = proportions_ztest([b.sum(), a.sum()], [b.size, a.size])
    assert ours.p_value == pytest.approx(p, rel=1e-10) and ours.statistic == pytest.approx(z, rel=1e-10)
    # Fieller with the critical value scaled by pooled / unpooled se: at the bounds the scaled quadratic is 0.
    pc, pt = a.mean(), b.mean()
    vc, vt = pc * (1 - pc) / a.size, pt * (1 - pt) / b.size
    pooled = (a.sum() + b.sum()) / (a.size + b.size)
    k2 = stats.norm.ppf(0.975) ** 2 * pooled * (1 - pooled) * (1 / a.size + 1 / b.size) / (vc + vt)
    for bound in (ours.ci_low, ours.ci_high):
        r = 1 + bound
        assert (pt - r * pc) ** 2 == pytest.approx(k2 * (vt + r * r * vc), rel=1e-9)


def test_relative_sequential_p_is_the_absolute_one_and_interval_is_the_sequence_for_the_ratio():
    c, t = SampleMean(20_000, 10_400, 30_100), SampleMean(20_000, 10_900, 31_200)
    relative = sequential_test(c, t, relative=True, tuning=40_000)
    absolute = sequential_test(c, t, tuning=40_000)
    assert relative.p_value == pytest.approx(absolute.p_value, rel=1e-12)
    assert (relative.ci_low, relative.ci_high, relative.p_value) == pytest.approx(
        (-0.01661845, 0.1171903, 0.32392945), abs=1e-8)
    k = boundary(40_000, ALPHA, 40_000)
    assert absolute.ci_high - absolute.lift == pytest.approx(k * absolute.standard_error, rel=1e-12)
    for bound in (relative.ci_low, relative.ci_high):
        r = 1 + bound
        assert (t.mean - r * c.mean) ** 2 == pytest.approx(
            k * k * (t.estimate_variance + r * r * c.estimate_variance), rel=1e-9)


def _boundary_pairs(rng, count: int):
    """Pairs of arms whose absolute z is spread over 0..4, so many land near the critical value."""
    for _ in range(count):
        n_c, n_t = rng.integers(50, 5000, 2)
        rate = rng.uniform(0.02, 0.6)
        c = Proportion(int(n_c), int(rng.binomial(n_c, rate)))
        se = math.sqrt(rate * (1 - rate) * (1 / n_c + 1 / n_t))
        target = min(max(rate + rng.choice([-1, 1]) * rng.uniform(0, 4) * se, 0.001), 0.999)
        yield c, Proportion(int(n_t), round(target * n_t))


@pytest.mark.parametrize("name", sorted(TESTS))
def test_relative_interval_excludes_zero_exactly_when_p_below_alpha(name):
    rng = np.random.default_rng(17)
    checked = rejected = 0
    for c, t in _boundary_pairs(rng, 400):
        for arms in ((c, t), (_as_mean(c), _as_mean(t))) if name != "proportion_z" else ((c, t),):
            r = TESTS[name](*arms, relative=True, alpha=ALPHA)
            if not r.ok or abs(r.p_value - ALPHA) < 1e-9:
                continue
            checked += 1
            rejected += r.p_value < ALPHA
            assert (r.ci_low > 0 or r.ci_high < 0) == (r.p_value < ALPHA), (arms, r)
            assert r.ci_low < r.lift < r.ci_high
    assert checked > 350 and 0.1 * checked < rejected < 0.9 * checked   # both sides of the boundary exercised


def _as_mean(p: Proportion) -> SampleMean:
    return SampleMean(p.n, float(p.successes), float(p.successes))


def test_interval_does_not_shrink_on_the_side_towards_no_effect():
    # Treatment below control is where the delta-method interval was too short towards 0 (its variance
    # Var(t)/c^2 + t^2 Var(c)/c^4 uses t^2 < c^2). Fieller's evaluates Var(c) at each candidate ratio, so the
    # side towards "no effect" is longer than the delta one, and the interval is skewed up like a ratio's.
    c, t = SampleMean(400, 400 * 2.0, 400 * 20.0), SampleMean(400, 400 * 1.5, 400 * 15.0)
    r = welch_t_test(c, t, relative=True)
    delta_half = stats.t.ppf(0.975, r.df) * r.standard_error
    assert r.ci_high - r.lift > 1.05 * delta_half
    assert r.ci_high - r.lift > r.lift - r.ci_low
    mirrored = welch_t_test(t, c, relative=True)      # treatment above control: the lift is t/c - 1 > 0
    # Swapping the arms gives the same p-value and verdict, as the absolute test does. The delta method's
    # z = lift / se was 0.25 / 0.117 = 2.14 (significant) this way round and 0.333 / 0.208 = 1.61 swapped.
    assert abs(r.lift) / r.standard_error > 2.1 and mirrored.lift / mirrored.standard_error < 1.65
    assert mirrored.p_value == pytest.approx(r.p_value, rel=1e-12) and r.p_value > ALPHA
    assert r.ci_high > 0 and mirrored.ci_low < 0


# --- issue 11 point 8: an arm without events -----------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TESTS))
def test_treatment_without_events_is_insufficient_data_not_a_crash(name):
    control = Proportion(5000, 120)
    empty = Proportion(5000, 0)
    if name != "proportion_z":
        control, empty = _as_mean(control), _as_mean(empty)
    relative = TESTS[name](control, empty, relative=True)
    assert relative.error == ErrorCode.INSUFFICIENT_DATA and "no events" in relative.reason
    assert relative.p_value is None and relative.significant is None
    absolute = TESTS[name](control, empty)
    assert absolute.ok and absolute.p_value < ALPHA and absolute.precise is False
    assert "treatment arm" in absolute.precision_reason and absolute.units_needed is None


def test_treatment_without_events_through_analyze_cuped_and_bayesian():
    zeros = CupedStatistic(3000, 0.0, 0.0, 150.0, 150.0, 0.0)
    clicks = CupedStatistic(3000, 140.0, 140.0, 150.0, 150.0, 12.0)
    assert cuped_test(clicks, zeros, relative=True).error == ErrorCode.INSUFFICIENT_DATA
    assert cuped_test(clicks, zeros, relative=True, test="sequential").error == ErrorCode.INSUFFICIENT_DATA
    bayes = probability_to_beat_control(_as_mean(Proportion(3000, 140)), _as_mean(Proportion(3000, 0)),
                                        relative=True)
    assert bayes.error == ErrorCode.INSUFFICIENT_DATA
    metrics = {"clicked": {"c": Proportion(3000, 140), "t": Proportion(3000, 0)},
               "clicks": {"c": _as_mean(Proportion(3000, 140)), "t": _as_mean(Proportion(3000, 0))},
               "ctr": {"c": RatioStatistic(3000, 140, 140, 9000, 30000, 420), "t": RatioStatistic(3000, 0, 0, 9100,
                                                                                                  30500, 0)},
               "pre": {"c": clicks, "t": zeros}}
    specs = {"clicked": MetricSpec("clicked", "proportion"), "clicks": MetricSpec("clicks", "mean"),
             "ctr": MetricSpec("ctr", "ratio"), "pre": MetricSpec("pre", "cuped")}
    for sequential in (False, True):
        analysis = analyze("c", metrics, specs, settings=AnalysisSettings(sequential=sequential))
        assert [c.decision.error for c in analysis.comparisons] == [ErrorCode.INSUFFICIENT_DATA] * 4
        json.dumps(analysis.to_dict(), allow_nan=False)


def test_tiny_control_mean_is_scale_invariant_or_insufficient():
    # Relative results do not depend on the unit of the metric: 1e-90 times the values gives the same answer.
    c, t = SampleMean(400, 210.5, 480.25), SampleMean(410, 240.0, 530.5)
    s = 1e-90
    tiny = (SampleMean(400, 210.5 * s, 480.25 * s * s), SampleMean(410, 240.0 * s, 530.5 * s * s))
    for test in (welch_t_test, z_test, sequential_test):
        scaled, plain = test(*tiny, relative=True), test(c, t, relative=True)
        assert scaled.ok
        for field in ("lift", "ci_low", "ci_high", "p_value", "standard_error"):
            assert getattr(scaled, field) == pytest.approx(getattr(plain, field), rel=1e-9), field
    # A 1e-90 control mean next to an ordinary spread cannot be divided by: unbounded interval, no crash.
    noisy = SampleMean(100, 1e-88, 50.0)
    for test in (welch_t_test, z_test, sequential_test):
        assert test(noisy, t, relative=True).error == ErrorCode.INSUFFICIENT_DATA
        assert test(noisy, t).ok


# --- withhold until precise -----------------------------------------------------------------------------
def test_precision_rule_for_proportions_is_about_100_events():
    enough = proportion_z_test(Proportion(10_000, 100), Proportion(10_000, 120), relative=True)
    assert enough.precise is True and enough.units_needed == 0 and enough.precision_reason is None
    assert enough.relative_standard_errors[0] == pytest.approx(math.sqrt(0.99 / 100), rel=1e-12)
    short = proportion_z_test(Proportion(10_000, 98), Proportion(10_000, 120), relative=True)
    assert short.ok and short.precise is False
    # RSE^2 = (1 - p) / (n p) <= 0.01  <=>  n >= 100 (1 - p) / p: 10,104.1 at p = 0.0098 -> 105 more units,
    # and 100 (1 - p) = 99.02 events -> 2 more than the 98 so far.
    assert short.units_needed == 105
    assert "about 2 more events" in short.precision_reason and "control arm" in short.precision_reason


def test_relative_standard_error_matches_scipy_sem_on_raw_data():
    rng = np.random.default_rng(21)
    x, y = rng.lognormal(0, 2.0, 1000), rng.lognormal(0, 2.0, 60_000)
    check = precision(sample_mean(x), sample_mean(y))
    assert check.relative_standard_errors == pytest.approx(
        (stats.sem(x) / x.mean(), stats.sem(y) / y.mean()), rel=1e-9)
    cv2 = x.var(ddof=1) / x.mean() ** 2
    assert check.precise is False and check.relative_standard_errors[1] < 0.1
    assert check.units_needed == math.ceil(100 * cv2 - 1000)     # n >= CV^2 / 0.1^2, control arm
    assert MAX_RELATIVE_STANDARD_ERROR == 0.1
