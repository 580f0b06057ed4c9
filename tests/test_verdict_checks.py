"""The verdict's error rates under daily peeking, simulated from sufficient statistics with the engine's own tests.

- CUPED decides the primary metric when the design asks for it: an A/A test with CUPED on, looked at every
  day for 14 days, must name a winner at most alpha of the time; and CUPED must buy power.
- Guardrails are non-inferiority tests: an arm that truly harms by exactly the margin must pass at most
  alpha of the time, at any of the 14 looks; an arm that does no harm should pass at the planned size.

The tests run a few hundred simulated experiments (a few seconds); `python tests/test_verdict_checks.py
--sims 1000` runs the full check whose figures docs/statistics.md quotes, and prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from experiments.stats import SampleMean, sequential_test  # noqa: E402
from experiments.stats.cuped import COVARIATE_FIELDS, CovariateSums, cuped_test  # noqa: E402
from experiments.stats.noninferiority import noninferiority  # noqa: E402

ALPHA = 0.05
LOOKS = 14


def _ctr_arm(rng, n: int, lift: float) -> np.ndarray:
    """Per-unit (day, m, d, x, z) of a CTR-like metric: a persistent per-user propensity seen in the pre-period
    (x, for the 80% of users with pre-period data) and in the experiment (m clicks of d searches)."""
    propensity = rng.beta(1.0, 4.0, n)
    z = rng.random(n) < 0.8
    pre_searches = 1 + rng.poisson(8.0, n)
    x = np.where(z, rng.binomial(pre_searches, propensity) / pre_searches, 0.0)
    d = 1 + rng.poisson(3.0, n)
    m = rng.binomial(d, np.clip(propensity * (1 + lift), 0, 1))
    day = rng.integers(0, LOOKS, n)
    return np.column_stack([day, m, d, x, z.astype(float)])


def _cumulative_sums(units: np.ndarray) -> list[CovariateSums]:
    """CovariateSums over the units that arrived up to each daily look."""
    day, m, d, x, z = units.T
    columns = [np.ones_like(m), m, m * m, d, d * d, m * d, x, x * x, z, x * z, m * x, d * x, m * z, d * z]
    daily = np.stack([np.bincount(day.astype(int), weights=c, minlength=LOOKS) for c in columns])
    running = np.cumsum(daily, axis=1)
    assert len(columns) == len(COVARIATE_FIELDS)
    return [CovariateSums(int(running[0, k]), *map(float, running[1:, k])) for k in range(LOOKS)]


def cuped_peeking(sims: int, n: int = 2000, lift: float = 0.0, seed: int = 7) -> dict:
    """Share of simulated experiments in which the always-valid test rejects at any daily look, plain and
    CUPED-adjusted (relative lift of the ratio, the decision the verdict reads)."""
    rng = np.random.default_rng(seed)
    plain = cuped = 0
    reduction = []
    for _ in range(sims):
        c, t = _cumulative_sums(_ctr_arm(rng, n, 0.0)), _cumulative_sums(_ctr_arm(rng, n, lift))
        plain_hit = cuped_hit = False
        for look_c, look_t in zip(c, t):
            if look_c.n < 2 or look_t.n < 2:
                continue
            adjusted = cuped_test(look_c, look_t, relative=True, alpha=ALPHA, test="sequential", tuning=2 * n)
            raw = sequential_test(look_c.metric, look_t.metric, relative=True, alpha=ALPHA, tuning=2 * n)
            cuped_hit |= adjusted.ok and adjusted.p_value < ALPHA
            plain_hit |= raw.ok and raw.p_value < ALPHA
        plain += plain_hit
        cuped += cuped_hit
        final_raw = sequential_test(c[-1].metric, t[-1].metric, relative=False, alpha=ALPHA, tuning=2 * n)
        final_adj = cuped_test(c[-1], t[-1], relative=False, alpha=ALPHA, test="sequential", tuning=2 * n)
        reduction.append(1 - (final_adj.standard_error / final_raw.standard_error) ** 2)
    return {"sims": sims, "units_per_arm": n, "true_relative_lift": lift, "looks": LOOKS,
            "plain_rejections": plain / sims, "cuped_rejections": cuped / sims,
            "cuped_upper_95": _upper(cuped, sims), "mean_variance_reduction": float(np.mean(reduction))}


def guardrail_peeking(sims: int, n: int, true_harm: float, margin: float = 0.01, base: float = 0.05,
                      seed: int = 11) -> dict:
    """Share of simulated experiments in which a zero-result-rate guardrail (absolute margin) passes at any
    daily look, when the treatment truly harms by `true_harm` (the rate goes up by it)."""
    rng = np.random.default_rng(seed)
    passed = 0
    for _ in range(sims):
        looks = []
        for rate in (base, base + true_harm):
            day = rng.integers(0, LOOKS, n)
            y = (rng.random(n) < rate).astype(float)
            s = np.cumsum(np.bincount(day, weights=y, minlength=LOOKS))
            k = np.cumsum(np.bincount(day, minlength=LOOKS))
            looks.append([SampleMean(int(k[i]), float(s[i]), float(s[i])) for i in range(LOOKS)])
        for c, t in zip(*looks):
            r = sequential_test(c, t, relative=False, alpha=ALPHA, tuning=2 * n)
            ni = noninferiority(r.lift, r.ci_low, r.ci_high, margin, higher_is_better=False, units=c.n + t.n)
            if ni.status == "pass":
                passed += 1
                break
    return {"sims": sims, "units_per_arm": n, "true_harm": true_harm, "margin": margin, "looks": LOOKS,
            "pass_rate": passed / sims, "upper_95": _upper(passed, sims)}


def _upper(k: int, n: int) -> float:
    """Upper end of the two-sided 95% Clopper-Pearson interval of k successes in n."""
    return 1.0 if k == n else float(stats.beta.ppf(0.975, k + 1, n - k))


def test_aa_with_cuped_under_daily_peeking_keeps_the_error_rate():
    result = cuped_peeking(sims=150, n=1500)
    assert result["cuped_rejections"] <= ALPHA, result
    assert result["mean_variance_reduction"] > 0.1, result  # the covariate carries real information


def test_cuped_buys_power():
    result = cuped_peeking(sims=60, n=1500, lift=0.08, seed=3)
    assert result["cuped_rejections"] > result["plain_rejections"], result


def test_a_guardrail_harming_by_exactly_its_margin_rarely_passes():
    result = guardrail_peeking(sims=200, n=4000, true_harm=0.01)
    assert result["pass_rate"] <= ALPHA, result


def test_a_harmless_guardrail_passes_at_a_large_enough_size():
    result = guardrail_peeking(sims=60, n=16000, true_harm=0.0, seed=5)
    assert result["pass_rate"] >= 0.8, result


@pytest.mark.parametrize("units", [1, 2])
def test_cumulative_sums_count_units(units):
    rng = np.random.default_rng(0)
    sums = _cumulative_sums(_ctr_arm(rng, units, 0.0))
    assert sums[-1].n == units


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sims", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps({
        "cuped_aa": cuped_peeking(args.sims),
        "cuped_power_lift_5pct": cuped_peeking(args.sims // 2, lift=0.05, seed=3),
        "guardrail_at_margin": guardrail_peeking(args.sims, n=4000, true_harm=0.01),
        "guardrail_power": {str(n): guardrail_peeking(args.sims // 2, n=n, true_harm=0.0, seed=5)["pass_rate"]
                            for n in (4000, 8000, 12000, 20000)},
    }, indent=2))
