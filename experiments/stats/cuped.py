"""CUPED: variance reduction with a pre-experiment covariate (Deng, Xu, Kohavi & Walker 2013).

Each unit's metric y is replaced by y - theta (x - mean(x)), where x is the same unit's pre-period value
and theta = Cov(x, y) / Var(x) is estimated once from both arms pooled, so the adjustment is the same
function of x in every arm. Because x was measured before assignment its mean does not depend on the arm,
so the adjusted means stay unbiased while their variance shrinks by the factor 1 - corr(x, y)^2.

From sums alone, per arm:
    adjusted mean      = mean(y) - theta (mean(x) - pooled mean(x))
    adjusted variance  = Var(y) + theta^2 Var(x) - 2 theta Cov(x, y)      (sample, ddof=1)
which equals, to rounding, the sample variance of the adjusted per-unit values, so Welch's test on the
result is Welch's test on the adjusted data. theta (and the pooled mean of x) is treated as known, the
usual large-sample simplification. A constant covariate gives theta = 0: no adjustment, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from experiments.stats.frequentist import welch_t_test, z_test
from experiments.stats.results import LiftResult, failed_lift
from experiments.stats.sequential import DEFAULT_TUNING, sequential_test
from experiments.stats.statistics import CupedStatistic, Estimate


@dataclass(frozen=True)
class CupedAdjustment:
    control: Estimate
    treatment: Estimate
    theta: float
    variance_reduction: float  # 1 - adjusted / unadjusted variance of the lift; 0 when nothing is gained


def cuped_theta(control: CupedStatistic, treatment: CupedStatistic) -> float:
    pooled = CupedStatistic(*(getattr(control, f) + getattr(treatment, f) for f in CupedStatistic.__dataclass_fields__))
    var_x = pooled.pre.variance
    return pooled.covariance / var_x if var_x > 0 else 0.0


def cuped_adjust(control: CupedStatistic, treatment: CupedStatistic) -> CupedAdjustment:
    theta = cuped_theta(control, treatment)
    pooled_x = (control.x_sum + treatment.x_sum) / (control.n + treatment.n)

    def adjusted(stat: CupedStatistic) -> Estimate:
        mean = stat.post.mean - theta * (stat.pre.mean - pooled_x)
        variance = stat.post.variance + theta**2 * stat.pre.variance - 2 * theta * stat.covariance
        return Estimate(stat.n, mean, max(variance, 0.0))

    c, t = adjusted(control), adjusted(treatment)
    before = control.post.estimate_variance + treatment.post.estimate_variance
    after = c.estimate_variance + t.estimate_variance
    reduction = 1.0 - after / before if before > 0 else 0.0
    return CupedAdjustment(control=c, treatment=t, theta=theta, variance_reduction=reduction)


TESTS = {"welch_t": welch_t_test, "z": z_test}


def cuped_test(control: CupedStatistic, treatment: CupedStatistic, *, relative: bool = False,
               alpha: float = 0.05, test: str = "welch_t", tuning: float = DEFAULT_TUNING) -> LiftResult:
    """Run `test` ("welch_t", "z" or "sequential") on the CUPED-adjusted means; method gets a "cuped_" prefix."""
    method = f"cuped_{test}"
    if test not in (*TESTS, "sequential"):
        raise ValueError(f"unknown test {test!r}; use welch_t, z or sequential")
    for role, stat in (("control", control), ("treatment", treatment)):
        problem = stat.problem()
        if problem:
            return failed_lift(method, relative, alpha, problem[0], f"The {role} arm: {problem[1]}")
    adjustment = cuped_adjust(control, treatment)
    if test == "sequential":
        result = sequential_test(adjustment.control, adjustment.treatment, relative=relative, alpha=alpha, tuning=tuning)
    else:
        result = TESTS[test](adjustment.control, adjustment.treatment, relative=relative, alpha=alpha)
    return replace(result, method=method)
