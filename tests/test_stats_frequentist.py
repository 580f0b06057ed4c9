"""Welch t, z and proportion tests: exact pins, then cross-checks against scipy/statsmodels on raw data."""

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from experiments.stats import Proportion, RatioStatistic, SampleMean, proportion_z_test, welch_t_test, z_test

CONTROL = SampleMean(1000, 512.3, 1311.7)
TREATMENT = SampleMean(1050, 561.9, 1402.2)


def pinned(result, **expected):
    for name, value in expected.items():
        assert getattr(result, name) == pytest.approx(value, abs=1e-8), name


def sample_mean(x: np.ndarray) -> SampleMean:
    return SampleMean(len(x), float(x.sum()), float((x**2).sum()))


def test_welch_pins():
    pinned(welch_t_test(CONTROL, TREATMENT), lift=0.02284286, standard_error=0.04528076, ci_low=-0.06595841,
           ci_high=0.11164412, statistic=0.50447158, p_value=0.61398443, df=2043.10710091)
    # Relative lift (changed deliberately, issue 11): the absolute test's statistic and p, Fieller's interval,
    # the delta-method standard error. Cross-checked against scipy in tests/test_stats_relative.py.
    pinned(welch_t_test(CONTROL, TREATMENT, relative=True), lift=0.04458883, standard_error=0.09042749,
           ci_low=-0.11854706, ci_high=0.24038251, statistic=0.50447158, p_value=0.61398443)


def test_z_and_proportion_pins():
    pinned(z_test(CONTROL, TREATMENT), ci_low=-0.0659058, ci_high=0.11159152, p_value=0.61393003)
    c, t = Proportion(5000, 612), Proportion(5100, 689)
    pinned(proportion_z_test(c, t), lift=0.01269804, standard_error=0.00666294, ci_low=-0.00036108,
           ci_high=0.02575716, statistic=1.90463664, p_value=0.05682732)
    pinned(proportion_z_test(c, t, relative=True), lift=0.10374215, standard_error=0.05723823,
           ci_low=-0.00286565, ci_high=0.22259212, statistic=1.90463664, p_value=0.05682732)


def test_ratio_pins():
    c = RatioStatistic(2000, 830, 1950, 8100, 41200, 4420)
    t = RatioStatistic(2040, 905, 2140, 8150, 41800, 4790)
    assert c.ratio == pytest.approx(0.1024691358, abs=1e-10)
    assert c.unit_variance == pytest.approx(0.04503912373, abs=1e-10)
    pinned(z_test(c, t, relative=True), lift=0.08367211, standard_error=0.06929577, ci_low=-0.04400243,
           ci_high=0.22935156, statistic=1.25741292, p_value=0.20860415)
    assert z_test(c, t).p_value == pytest.approx(0.20860415, abs=1e-8)    # the relative p is the absolute one


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_welch_matches_scipy_on_raw_data(seed):
    rng = np.random.default_rng(seed)
    a = rng.lognormal(0.0, 1.0, 400 + 50 * seed)   # skewed, like revenue or dwell time
    b = rng.lognormal(0.1, 1.2, 500)
    ours = welch_t_test(sample_mean(a), sample_mean(b), alpha=0.1)
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(confidence_level=0.9)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert ours.df == pytest.approx(ref.df, rel=1e-9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_proportion_test_matches_statsmodels():
    rng = np.random.default_rng(7)
    a, b = rng.random(6000) < 0.11, rng.random(6400) < 0.12
    ours = proportion_z_test(Proportion(a.size, int(a.sum())), Proportion(b.size, int(b.sum())))
    z, p = proportions_ztest([b.sum(), a.sum()], [b.size, a.size])
    low, high = confint_proportions_2indep(b.sum(), b.size, a.sum(), a.size, method="wald", compare="diff")
    assert ours.statistic == pytest.approx(z, rel=1e-10)
    assert ours.p_value == pytest.approx(p, rel=1e-10)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((low, high), rel=1e-10)


def test_ratio_delta_method_matches_linearisation_on_raw_data():
    # Independent route: the delta-method variance is the variance of the per-unit linearised values
    # (m_i - r d_i) / mean(d), computed here directly on the raw per-user clicks and impressions.
    rng = np.random.default_rng(11)
    impressions = rng.poisson(4, 3000) + 1
    clicks = rng.binomial(impressions, rng.beta(2, 15, 3000))
    stat = RatioStatistic(3000, clicks.sum(), (clicks**2).sum(), impressions.sum(), (impressions**2).sum(),
                          (clicks * impressions).sum())
    r = clicks.sum() / impressions.sum()
    linearised = (clicks - r * impressions) / impressions.mean()
    assert stat.ratio == pytest.approx(r, rel=1e-12)
    assert stat.unit_variance == pytest.approx(np.var(linearised, ddof=1), rel=1e-9)


def test_ratio_and_relative_lift_standard_errors_match_simulation():
    # The delta method is an approximation; check it against the spread of the estimates over many
    # simulated experiments (ratio metric: clicks/impressions per user; relative lift of the ratio).
    rng = np.random.default_rng(5)
    experiments, users = 2000, 1000

    def arm(p):
        imp = rng.poisson(3, (experiments, users)) + 1
        clk = rng.binomial(imp, rng.beta(2, 2 / p - 2, (experiments, users)))
        return clk, imp

    (cc, ci), (tc, ti) = arm(0.10), arm(0.12)
    ratio_c = cc.sum(1) / ci.sum(1)
    lifts = (tc.sum(1) / ti.sum(1)) / ratio_c - 1
    stat = lambda c, i, k: RatioStatistic(users, c[k].sum(), (c[k]**2).sum(), i[k].sum(), (i[k]**2).sum(), (c[k]*i[k]).sum())
    predicted_ratio_se = np.mean([np.sqrt(stat(cc, ci, k).estimate_variance) for k in range(50)])
    predicted_lift_se = np.mean([z_test(stat(cc, ci, k), stat(tc, ti, k), relative=True).standard_error
                                 for k in range(50)])
    # 2,000 replications estimate a standard deviation to about 1.6 % (1/sqrt(2(n-1))); allow 3 SE.
    assert predicted_ratio_se == pytest.approx(ratio_c.std(ddof=1), rel=0.05)
    assert predicted_lift_se == pytest.approx(lifts.std(ddof=1), rel=0.05)
