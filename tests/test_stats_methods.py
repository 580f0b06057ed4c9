"""SRM, CUPED, multiple-testing correction, power and the Bayesian view: pins and independent cross-checks."""

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower

from experiments.stats import (
    CupedStatistic, SampleMean, benjamini_hochberg, cuped_adjust, cuped_test, holm, mde_mean, mde_proportion, power,
    probability_to_beat_control, sample_size_mean, sample_size_proportion, srm_check,
)


# --- SRM ----------------------------------------------------------------------------------------------
def test_srm_pins_and_alert():
    ok = srm_check({"a": 10120, "b": 9880}, {"a": 50, "b": 50})
    assert ok.p_value == pytest.approx(0.08968602177, abs=1e-10) and ok.alert is False
    skewed = srm_check({"a": 5000, "b": 5400, "c": 5100}, {"a": 1, "b": 1, "c": 1})
    assert skewed.p_value == pytest.approx(0.000227787638, abs=1e-11) and skewed.alert is True


def test_srm_matches_scipy_chisquare_with_unequal_weights():
    observed = {"control": 20_480, "t1": 9_870, "t2": 10_150}
    weights = {"control": 2, "t1": 1, "t2": 1}
    result = srm_check(observed, weights)
    total = sum(observed.values())
    ref = stats.chisquare(list(observed.values()), [total / 2, total / 4, total / 4])
    assert result.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert result.df == 2


# --- CUPED --------------------------------------------------------------------------------------------
def _cuped(y, x):
    return CupedStatistic(len(y), y.sum(), (y**2).sum(), x.sum(), (x**2).sum(), (x * y).sum())


def test_cuped_pins():
    c = CupedStatistic(1000, 512.3, 1311.7, 498.2, 1250.4, 1010.5)
    t = CupedStatistic(1050, 561.9, 1402.2, 520.7, 1301.9, 1072.8)
    adjustment = cuped_adjust(c, t)
    # Pinned from the one regression model (theta pooled over arms, the metric centred within its arm; the
    # cross-check against numpy and scipy is the next test).
    assert adjustment.theta == pytest.approx((0.75733760,), abs=1e-8)
    assert adjustment.variance_reduction == pytest.approx(0.54544481, abs=1e-8)
    result = cuped_test(c, t)
    assert (result.lift, result.ci_low, result.ci_high, result.p_value) == pytest.approx(
        (0.02458113, -0.03528934, 0.0844516, 0.42080766), abs=1e-8)


def test_cuped_matches_welch_on_adjusted_raw_data():
    rng = np.random.default_rng(8)
    x_c, x_t = rng.gamma(2.0, 1.5, 1500), rng.gamma(2.0, 1.5, 1600)        # pre-period activity
    y_c = 0.8 * x_c + rng.normal(0, 1.0, 1500)
    y_t = 0.8 * x_t + 0.15 + rng.normal(0, 1.0, 1600)
    # Independent computation: theta is the slope of the OLS (numpy's lstsq) of y centred within its arm on x,
    # both arms pooled; adjust each unit, then scipy's Welch test.
    x_all = np.concatenate([x_c, x_t])
    phi = np.concatenate([y_c - y_c.mean(), y_t - y_t.mean()])
    design = np.column_stack([np.ones(len(x_all)), x_all])
    theta = np.linalg.lstsq(design, phi, rcond=None)[0][1]
    adj_c, adj_t = y_c - theta * (x_c - x_all.mean()), y_t - theta * (x_t - x_all.mean())
    ref = stats.ttest_ind(adj_t, adj_c, equal_var=False)
    ci = ref.confidence_interval()
    ours = cuped_test(_cuped(y_c, x_c), _cuped(y_t, x_t))
    assert cuped_adjust(_cuped(y_c, x_c), _cuped(y_t, x_t)).theta[0] == pytest.approx(theta, rel=1e-10)
    assert ours.lift == pytest.approx(adj_t.mean() - adj_c.mean(), rel=1e-10)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-8)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    plain = stats.ttest_ind(y_t, y_c, equal_var=False).confidence_interval()
    assert ours.ci_high - ours.ci_low < 0.6 * (plain.high - plain.low)   # corr ~0.8 -> much narrower


def test_cuped_with_constant_covariate_is_plain_welch():
    rng = np.random.default_rng(2)
    y_c, y_t = rng.normal(0, 1, 300), rng.normal(0.1, 1, 300)
    ones_c, ones_t = np.ones(300), np.ones(300)
    result = cuped_test(_cuped(y_c, ones_c), _cuped(y_t, ones_t))
    assert result.p_value == pytest.approx(stats.ttest_ind(y_t, y_c, equal_var=False).pvalue, rel=1e-9)


# --- multiple testing ---------------------------------------------------------------------------------
def test_correction_pins_and_none_passthrough():
    p = [0.01, 0.04, 0.03, 0.005, None]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02, None])
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02, None])


def test_correction_matches_statsmodels():
    p = np.random.default_rng(4).uniform(0, 0.2, 25) ** 2
    assert holm(list(p)) == pytest.approx(multipletests(p, method="holm")[1], rel=1e-12)
    assert benjamini_hochberg(list(p)) == pytest.approx(multipletests(p, method="fdr_bh")[1], rel=1e-12)


# --- power --------------------------------------------------------------------------------------------
def test_power_pins():
    assert power(0.1, 1.0, 1000) == pytest.approx(0.6087794846, abs=1e-10)
    assert sample_size_mean(0.1, 1.0) == 1570
    assert sample_size_proportion(0.1, 0.1, relative=True) == 14749
    assert mde_mean(1.0, 1000) == pytest.approx(0.1252905464, abs=1e-10)
    assert mde_proportion(0.1, 10_000) == pytest.approx(0.0121992919, abs=1e-10)
    assert mde_proportion(0.1, 10_000, relative=True) == pytest.approx(0.121992919, abs=1e-9)


@pytest.mark.parametrize("effect,n,ratio", [(0.1, 1000, 1.0), (0.05, 3000, 2.0), (0.3, 150, 0.5)])
def test_power_matches_statsmodels(effect, n, ratio):
    ref = NormalIndPower()
    assert power(effect, 1.0, n, n_treatment=ratio * n) == pytest.approx(
        ref.power(effect_size=effect, nobs1=n, alpha=0.05, ratio=ratio), rel=1e-10)
    assert sample_size_mean(effect, 1.0, ratio=ratio) == int(np.ceil(
        ref.solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=ratio)))
    # statsmodels' own MDE solver stops early (about 1e-5 off); its power function at our MDE is exact.
    mde = mde_mean(1.0, n, ratio=ratio)
    assert ref.power(effect_size=mde, nobs1=n, alpha=0.05, ratio=ratio) == pytest.approx(0.8, rel=1e-10)
    assert mde == pytest.approx(ref.solve_power(nobs1=n, alpha=0.05, power=0.8, ratio=ratio), rel=1e-4)


def test_power_round_trips():
    n = sample_size_proportion(0.2, 0.02)
    assert power(0.02, 0.2 * 0.8, n, variance_treatment=0.22 * 0.78) >= 0.8
    assert power(0.02, 0.2 * 0.8, n - 1, variance_treatment=0.22 * 0.78) < 0.8
    assert mde_proportion(0.2, n) == pytest.approx(0.02, rel=1e-3)


# --- Bayesian -----------------------------------------------------------------------------------------
def test_probability_to_beat_control_pins_and_monte_carlo():
    c, t = SampleMean(1000, 512.3, 1311.7), SampleMean(1050, 561.9, 1402.2)
    result = probability_to_beat_control(c, t)
    assert result.probability_to_beat_control == pytest.approx(0.6930349857, abs=1e-10)
    assert probability_to_beat_control(c, t, higher_is_better=False).probability_to_beat_control == pytest.approx(
        1 - 0.6930349857, abs=1e-10)
    # Monte Carlo under the flat-prior normal posteriors of each arm's mean.
    rng = np.random.default_rng(0)
    draws_c = rng.normal(c.mean, np.sqrt(c.estimate_variance), 400_000)
    draws_t = rng.normal(t.mean, np.sqrt(t.estimate_variance), 400_000)
    assert np.mean(draws_t > draws_c) == pytest.approx(result.probability_to_beat_control, abs=0.003)
