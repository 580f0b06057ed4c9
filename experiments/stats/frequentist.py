"""Fixed-horizon tests: Welch's t-test, the z-test, and the two-proportion z-test.

Absolute lift is treatment - control. Relative lift is treatment / control - 1 with the delta-method
variance (treating the two arms as independent):

    Var(t/c - 1) ~ Var(t)/c^2 + t^2 Var(c)/c^4

Welch's degrees of freedom (Welch-Satterthwaite) are used for the relative lift too. These tests are valid
when the analysis happens once, at the planned sample size; for daily looks use `sequential`.
"""

from __future__ import annotations

import math

from scipy import special

from experiments.stats.results import ErrorCode, LiftResult, failed_lift, finite_or_none
from experiments.stats.statistics import Proportion, Statistic


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def check_pair(method: str, control: Statistic, treatment: Statistic, relative: bool,
               alpha: float) -> LiftResult | None:
    """The failed result that two arms' sums force, or None when a test can run."""
    _check_alpha(alpha)
    for role, stat in (("control", control), ("treatment", treatment)):
        problem = stat.problem()
        if problem:
            code, why = problem
            return failed_lift(method, relative, alpha, code, f"The {role} arm: {why}")
    if relative and control.estimate == 0:
        return failed_lift(method, relative, alpha, ErrorCode.ZERO_CONTROL_MEAN,
                           "The control mean is 0, so a relative lift is undefined; use the absolute lift.")
    if control.estimate_variance + treatment.estimate_variance <= 0:
        return failed_lift(method, relative, alpha, ErrorCode.ZERO_VARIANCE,
                           "Both arms have zero variance (every unit has the same value); no test is possible.")
    return None


def lift_and_variance(control: Statistic, treatment: Statistic, relative: bool) -> tuple[float, float]:
    c, t = control.estimate, treatment.estimate
    vc, vt = control.estimate_variance, treatment.estimate_variance
    if not relative:
        return t - c, vc + vt
    return t / c - 1.0, vt / c**2 + t**2 * vc / c**4


def welch_df(control: Statistic, treatment: Statistic) -> float:
    vc, vt = control.estimate_variance, treatment.estimate_variance
    return (vc + vt) ** 2 / (vc**2 / (control.n - 1) + vt**2 / (treatment.n - 1))


def _result(method: str, control: Statistic, treatment: Statistic, relative: bool, alpha: float,
            lift: float, se: float, statistic: float, df: float | None) -> LiftResult:
    if df is None:
        p_value = 2.0 * special.ndtr(-abs(statistic))
        critical = -special.ndtri(alpha / 2)
    else:
        p_value = 2.0 * special.stdtr(df, -abs(statistic))
        critical = special.stdtrit(df, 1 - alpha / 2)
    return LiftResult(
        method=method, relative=relative, alpha=alpha,
        control_value=finite_or_none(control.estimate), treatment_value=finite_or_none(treatment.estimate),
        lift=finite_or_none(lift), standard_error=finite_or_none(se),
        ci_low=finite_or_none(lift - critical * se), ci_high=finite_or_none(lift + critical * se),
        statistic=finite_or_none(statistic), p_value=finite_or_none(p_value), df=finite_or_none(df),
    )


def welch_t_test(control: Statistic, treatment: Statistic, *, relative: bool = False,
                 alpha: float = 0.05) -> LiftResult:
    """Welch's unequal-variance t-test (matches scipy.stats.ttest_ind(equal_var=False) for absolute lift)."""
    failed = check_pair("welch_t", control, treatment, relative, alpha)
    if failed:
        return failed
    lift, variance = lift_and_variance(control, treatment, relative)
    se = math.sqrt(variance)
    return _result("welch_t", control, treatment, relative, alpha, lift, se, lift / se, welch_df(control, treatment))


def z_test(control: Statistic, treatment: Statistic, *, relative: bool = False, alpha: float = 0.05) -> LiftResult:
    """Large-sample z-test; the usual choice for ratio metrics, whose variance is a delta-method estimate."""
    failed = check_pair("z", control, treatment, relative, alpha)
    if failed:
        return failed
    lift, variance = lift_and_variance(control, treatment, relative)
    se = math.sqrt(variance)
    return _result("z", control, treatment, relative, alpha, lift, se, lift / se, None)


def proportion_z_test(control: Proportion, treatment: Proportion, *, relative: bool = False,
                      alpha: float = 0.05) -> LiftResult:
    """Two-proportion z-test.

    Absolute lift: the statistic uses the pooled proportion under H0 (as statsmodels proportions_ztest);
    the interval is the unpooled Wald interval (as statsmodels confint_proportions_2indep(method="wald")).
    Relative lift: delta-method standard error for both statistic and interval.
    """
    failed = check_pair("proportion_z", control, treatment, relative, alpha)
    if failed:
        return failed
    lift, variance = lift_and_variance(control, treatment, relative)
    se = math.sqrt(variance)
    if relative:
        return _result("proportion_z", control, treatment, relative, alpha, lift, se, lift / se, None)
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / control.n + 1 / treatment.n))
    return _result("proportion_z", control, treatment, relative, alpha, lift, se, lift / pooled_se, None)
