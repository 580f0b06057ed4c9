"""A/A false-positive rates of the relative-lift decision on skewed, sparse and small metrics (issue 11, point 9).

Each regime simulates 1,000 A/A experiments x 14 daily looks. Each arm's cumulative sufficient statistics come
straight from numpy (seeded, vectorised); the real engine is called at every look. Measured rejections:

    sequential   the always-valid test on the relative lift, rejecting at the first look with p < alpha
                 (what the verdict uses when the experiment is analysed sequentially)
    fixed        the fixed-horizon relative test, once, at the final look

Bounds: the sequential rate's 95 % Clopper-Pearson upper end must be <= alpha (two-sided interval). The
fixed-horizon Welch test gets 5,000 experiments at the planned size, so the same Clopper-Pearson bound can
sit under alpha for a test that is at or below its level; the fixed-horizon proportion test is scored
exactly (binomial enumeration of every pair of counts through the engine), so its size needs no interval.

Measured with these seeds, relative lift, alpha 0.05 (before: the delta-method z of t/c - 1; after: the
absolute difference's test with Fieller's interval):

    regime                               sequential (14 looks)     fixed horizon
    skewed: lognormal sigma 2, 2,002/arm     0.094 -> 0.002       Welch 0.070 -> 0.040
    sparse: 1 % binary, 4,998/arm            0.061 -> 0.010       proportion z (exact size) 0.0543 -> 0.0494
    small:  lognormal sigma 2, 210/arm       0.253 -> 0.002       Welch 0.115 -> 0.033
"""

import math

import numpy as np
import pytest
from scipy import stats

from experiments.stats import Proportion, SampleMean, proportion_z_test, sequential_test, welch_t_test

ALPHA = 0.05
EXPERIMENTS, LOOKS = 1000, 14
FIXED_EXPERIMENTS = 5000


PER_DAY = {"skewed": 143, "sparse": 357, "small": 15}    # x 14 looks: 2,002 / 4,998 / 210 units per arm


def _lognormal_arm(rng, experiments: int, looks: int, per_day: int, sigma: float = 2.0):
    """Cumulative (sum, sum of squares) per look; raw draws summed per day, which is exact and fast enough."""
    x = rng.lognormal(0.0, sigma, (experiments, looks, per_day))
    return x.sum(2).cumsum(1), (x * x).sum(2).cumsum(1)


def _binary_arm(rng, experiments: int, looks: int, per_day: int, rate: float):
    return rng.binomial(per_day, rate, (experiments, looks)).cumsum(1)


def _arms(regime: str, rng, experiments: int, looks: int):
    """Per-look (control, treatment) statistics of `experiments` A/A experiments: arms(e, look) -> pair.
    The looks split the regime's planned units per arm evenly."""
    per_day = PER_DAY[regime] * LOOKS // looks
    n = per_day * np.arange(1, looks + 1)
    if regime == "sparse":
        successes = [_binary_arm(rng, experiments, looks, per_day, 0.01) for _ in range(2)]
        return n, lambda e, d: tuple(Proportion(int(n[d]), int(s[e, d])) for s in successes)
    sums = [_lognormal_arm(rng, experiments, looks, per_day) for _ in range(2)]
    return n, lambda e, d: tuple(SampleMean(int(n[d]), float(s[e, d]), float(q[e, d])) for s, q in sums)


def sequential_rate(regime: str, seed: int = 11) -> float:
    """Share of A/A experiments whose always-valid relative test rejects at any of the 14 looks."""
    n, arms = _arms(regime, np.random.default_rng(seed), EXPERIMENTS, LOOKS)
    tuning = 2 * int(n[-1])
    rejected = 0
    for e in range(EXPERIMENTS):
        for day in range(LOOKS):
            p = sequential_test(*arms(e, day), relative=True, alpha=ALPHA, tuning=tuning).p_value
            if p is not None and p < ALPHA:
                rejected += 1
                break
    return rejected / EXPERIMENTS


def fixed_rate(regime: str, seed: int = 12) -> tuple[float, float]:
    """(rejection rate, share precise) of the fixed-horizon relative Welch test, once at the planned n."""
    _, arms = _arms(regime, np.random.default_rng(seed), FIXED_EXPERIMENTS, 1)
    results = [welch_t_test(*arms(e, 0), relative=True, alpha=ALPHA) for e in range(FIXED_EXPERIMENTS)]
    rejected = sum(r.p_value is not None and r.p_value < ALPHA for r in results)
    return rejected / FIXED_EXPERIMENTS, sum(bool(r.precise) for r in results) / FIXED_EXPERIMENTS


def exact_proportion_size(n: int, rate: float) -> float:
    """Exact false-positive rate of the fixed-horizon relative proportion test with n units per arm: the
    binomial probability of every pair of counts the engine rejects (no simulation noise)."""
    counts = np.arange(0, int(n * rate + 12 * math.sqrt(n * rate)) + 1)
    weights = stats.binom.pmf(counts, n, rate)
    assert weights.sum() > 1 - 1e-12
    return float(sum(weights[a] * weights[b] for a in counts for b in counts
                     if (p := proportion_z_test(Proportion(n, int(a)), Proportion(n, int(b)), relative=True,
                                                alpha=ALPHA).p_value) is not None and p < ALPHA))


def clopper_pearson_upper(rate: float, trials: int, level: float = 0.95) -> float:
    k = round(rate * trials)
    return 1.0 if k == trials else float(stats.beta.ppf(1 - (1 - level) / 2, k + 1, trials - k))


@pytest.mark.parametrize("regime", ["skewed", "sparse", "small"])
def test_sequential_relative_false_positive_rate(regime):
    rate = sequential_rate(regime)
    upper = clopper_pearson_upper(rate, EXPERIMENTS)
    print(f"A/A {regime}: sequential relative FPR over {LOOKS} looks = {rate:.3f} (95 % CP upper {upper:.3f})")
    assert upper <= ALPHA


@pytest.mark.parametrize("regime", ["skewed", "small"])
def test_fixed_horizon_relative_welch_false_positive_rate(regime):
    rate, precise = fixed_rate(regime)
    upper = clopper_pearson_upper(rate, FIXED_EXPERIMENTS)
    print(f"A/A {regime}: fixed-horizon relative Welch FPR = {rate:.4f} (95 % CP upper {upper:.4f}), "
          f"precise in {precise:.0%}")
    assert upper <= ALPHA
    # The precision rule (RSE <= 0.1, n >= 100 CV^2 = 5,360 here) flags both lognormal sizes as too small.
    assert precise < 0.5


def test_fixed_horizon_relative_proportion_size_is_exact_and_below_alpha():
    size = exact_proportion_size(4998, 0.01)
    print(f"A/A sparse: exact size of the fixed-horizon relative proportion test = {size:.5f}")
    assert size == pytest.approx(0.04935189, abs=1e-8)
    assert size <= ALPHA


def test_clopper_pearson_upper_matches_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    for k in (0, 7, 31, 50):
        assert clopper_pearson_upper(k / 1000, 1000) == pytest.approx(
            proportion_confint(k, 1000, alpha=0.05, method="beta")[1], rel=1e-12)
    assert math.isclose(clopper_pearson_upper(1.0, 10), 1.0)
