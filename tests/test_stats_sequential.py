"""Sequential testing: pins, interval/p-value duality, and the A/A peeking and power simulations.

Simulations draw each arm's daily sufficient statistics directly (vectorised numpy, seeded), then call the
real engine functions at every daily look.
"""

import math

import numpy as np
import pytest

from experiments.stats import (
    Proportion, SampleMean, proportion_z_test, sample_size_mean, sample_size_proportion, sequential_test,
    welch_t_test,
)
from experiments.stats.sequential import always_valid_p_value, half_width, rho_squared

ALPHA = 0.05
CONTROL = SampleMean(1000, 512.3, 1311.7)
TREATMENT = SampleMean(1050, 561.9, 1402.2)


def test_sequential_pins():
    r = sequential_test(CONTROL, TREATMENT, tuning=2000)
    assert (r.ci_low, r.ci_high) == pytest.approx((-0.1145901, 0.16027581), abs=1e-8)
    assert r.p_value == 1.0
    big = sequential_test(SampleMean(20_000, 10_400, 30_100), SampleMean(20_000, 10_900, 31_200), tuning=40_000)
    assert big.lift == pytest.approx(0.025, abs=1e-12)
    assert (big.ci_low, big.ci_high, big.p_value) == pytest.approx((-0.00891905, 0.05891905, 0.32392945), abs=1e-8)


def test_interval_excludes_zero_exactly_when_p_below_alpha():
    for z in np.linspace(0.5, 5, 46):
        se, n = 0.01, 8000
        width = half_width(se, n, ALPHA, tuning=5000)
        p = always_valid_p_value(z, n, ALPHA, tuning=5000)
        assert (z * se > width) == (p < ALPHA)
        # At p == alpha the boundary is exactly the half-width: the closed form inverts the interval.
        boundary_z = math.sqrt(2 * (n * rho_squared(ALPHA, 5000) + 1) / (n * rho_squared(ALPHA, 5000))
                               * math.log(math.sqrt(n * rho_squared(ALPHA, 5000) + 1) / ALPHA))
        assert always_valid_p_value(boundary_z, n, ALPHA, 5000) == pytest.approx(ALPHA, rel=1e-12)
        assert half_width(se, n, ALPHA, 5000) == pytest.approx(boundary_z * se, rel=1e-12)


def test_interval_is_tightest_near_the_tuning_point_and_wider_than_fixed_horizon():
    ratios = {n: half_width(1 / math.sqrt(n), n, ALPHA, tuning=10_000) / (1.959964 / math.sqrt(n))
              for n in (1_000, 10_000, 100_000)}
    assert ratios[10_000] < ratios[1_000] and ratios[10_000] < ratios[100_000]
    assert ratios[10_000] == pytest.approx(1.5486, abs=1e-3)


def _normal_daily_sums(rng, experiments, looks, per_day, mean, sd):
    """Exact sufficient statistics of normal samples: the sum and, independently, (n-1) s^2 ~ sd^2 chi2."""
    n = per_day * np.arange(1, looks + 1)
    sums = rng.normal(mean * per_day, sd * math.sqrt(per_day), (experiments, looks)).cumsum(1)
    # Squares add up day by day: sum of squares of one day = (m-1) s^2 + (day sum)^2 / m.
    day_sums = np.diff(sums, axis=1, prepend=0.0)
    day_ss = sd**2 * rng.chisquare(per_day - 1, (experiments, looks)) + day_sums**2 / per_day
    return n, sums, day_ss.cumsum(1)


def test_aa_false_positive_rate_under_daily_peeking():
    """1,000 A/A experiments x 14 daily looks, clicks (Bernoulli) and a skewed-looking normal metric.

    Naive: a fixed-horizon Welch test every day, stop at the first p < alpha. Sequential: the always-valid
    p-value every day. Expected: naive far above alpha, sequential at or below it.
    """
    rng = np.random.default_rng(2024)
    experiments, looks, per_day = 1000, 14, 300
    tuning = 2 * per_day * looks
    clicks = rng.binomial(per_day, 0.1, (2, experiments, looks)).cumsum(2)
    n = per_day * np.arange(1, looks + 1)
    naive = np.zeros(experiments, bool)
    sequential = np.zeros(experiments, bool)
    for e in range(experiments):
        for day in range(looks):
            c = SampleMean(int(n[day]), float(clicks[0, e, day]), float(clicks[0, e, day]))
            t = SampleMean(int(n[day]), float(clicks[1, e, day]), float(clicks[1, e, day]))
            naive[e] |= welch_t_test(c, t, alpha=ALPHA).p_value < ALPHA
            sequential[e] |= sequential_test(c, t, alpha=ALPHA, tuning=tuning).p_value < ALPHA
    naive_rate, sequential_rate = naive.mean(), sequential.mean()
    se = math.sqrt(ALPHA * (1 - ALPHA) / experiments)
    print(f"A/A peeking over {looks} looks: naive FPR={naive_rate:.3f}, sequential FPR={sequential_rate:.3f}")
    assert naive_rate > ALPHA + 5 * se          # peeking with fixed-horizon tests inflates the error rate
    assert sequential_rate <= ALPHA + 2 * se    # the confidence sequence keeps it at alpha


def test_sequential_aa_on_continuous_metric():
    rng = np.random.default_rng(99)
    experiments, looks, per_day = 1000, 14, 300
    nc, sc, qc = _normal_daily_sums(rng, experiments, looks, per_day, 2.0, 3.0)
    _, st, qt = _normal_daily_sums(rng, experiments, looks, per_day, 2.0, 3.0)
    rejected = np.zeros(experiments, bool)
    for e in range(experiments):
        for day in range(looks):
            result = sequential_test(SampleMean(int(nc[day]), sc[e, day], qc[e, day]),
                                     SampleMean(int(nc[day]), st[e, day], qt[e, day]), tuning=2 * per_day * looks)
            rejected[e] |= result.p_value < ALPHA
    print(f"A/A continuous metric: sequential FPR={rejected.mean():.3f}")
    assert rejected.mean() <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / experiments)


def test_observed_power_matches_calculator_for_means():
    rng = np.random.default_rng(3)
    n = sample_size_mean(0.1, 1.0, alpha=ALPHA, power_target=0.8)
    experiments = 3000
    _, sc, qc = _normal_daily_sums(rng, experiments, 1, n, 0.0, 1.0)
    _, st, qt = _normal_daily_sums(rng, experiments, 1, n, 0.1, 1.0)
    hits = [welch_t_test(SampleMean(n, sc[e, 0], qc[e, 0]), SampleMean(n, st[e, 0], qt[e, 0])).p_value < ALPHA
            for e in range(experiments)]
    observed = float(np.mean(hits))
    print(f"means: n={n} per arm, planned power 0.80, observed {observed:.3f}")
    assert observed == pytest.approx(0.8, abs=3 * math.sqrt(0.8 * 0.2 / experiments))


def test_observed_power_matches_calculator_for_proportions():
    rng = np.random.default_rng(4)
    n = sample_size_proportion(0.10, 0.10, relative=True, alpha=ALPHA, power_target=0.8)
    experiments = 3000
    c, t = rng.binomial(n, 0.10, experiments), rng.binomial(n, 0.11, experiments)
    hits = [proportion_z_test(Proportion(n, int(c[e])), Proportion(n, int(t[e]))).p_value < ALPHA
            for e in range(experiments)]
    observed = float(np.mean(hits))
    print(f"proportions: n={n} per arm, planned power 0.80, observed {observed:.3f}")
    assert observed == pytest.approx(0.8, abs=3 * math.sqrt(0.8 * 0.2 / experiments))


def test_sequential_power_costs_units():
    """The price of peeking: at the fixed-horizon n the sequential test has less power; about 2x n restores it."""
    rng = np.random.default_rng(6)
    n_fixed, experiments, looks = sample_size_mean(0.1, 1.0), 1000, 14
    power_at = {}
    for multiple in (1.0, 2.0):
        per_day = math.ceil(multiple * n_fixed / looks)
        n, sc, qc = _normal_daily_sums(rng, experiments, looks, per_day, 0.0, 1.0)
        _, st, qt = _normal_daily_sums(rng, experiments, looks, per_day, 0.1, 1.0)
        hit = np.zeros(experiments, bool)
        for e in range(experiments):
            for day in range(looks):
                hit[e] |= sequential_test(SampleMean(int(n[day]), sc[e, day], qc[e, day]),
                                          SampleMean(int(n[day]), st[e, day], qt[e, day]),
                                          tuning=2 * n[-1]).p_value < ALPHA
        power_at[multiple] = float(hit.mean())
    print(f"sequential power over {looks} looks: {power_at}")
    assert power_at[1.0] < 0.7
    assert power_at[2.0] > 0.8 - 3 * math.sqrt(0.16 / experiments)
