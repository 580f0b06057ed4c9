"""Fixed-horizon tests: Welch's t-test, the z-test, and the two-proportion z-test.

Absolute lift is treatment - control, with variance Var(t) + Var(c) (the arms are independent).

Relative lift is treatment / control - 1, and is handled in two parts (`lift_result`):

* Significance (p-value, statistic) comes from the test of the absolute difference. "t / c - 1 = 0" and
  "t - c = 0" are the same null hypothesis, and the absolute test holds its error rate where the delta-method
  z of the relative lift does not: that variance, Var(t)/c^2 + t^2 Var(c)/c^4, shrinks when t < c, so on
  skewed or sparse metrics it rejected too often whenever treatment came out low (A/A false-positive rates
  of 0.06-0.25 at alpha 0.05; tests/test_stats_aa.py).
* The interval is Fieller's interval for the ratio rho = mu_t / mu_c, minus 1:

      { rho : (t - rho c)^2 <= k^2 (Var(t) + rho^2 Var(c)) }      k: the test's critical value

  It collects the rho for which the same test of "t - rho c = 0" does not reject, so at rho = 1 it *is* the
  absolute test: the interval excludes 0 exactly when p < alpha (tests/test_stats_relative.py checks it).
  It is not symmetric about the estimate and does not shrink on the low side. When the control mean is
  within k standard errors of 0 (k^2 Var(c) >= c^2) the set is unbounded, so no relative interval exists
  and the result is `insufficient_data`; so it is when the treatment has no events (-100 %, no width).
  standard_error stays the delta-method one (it describes the spread of the estimate well, see
  test_ratio_and_relative_lift_standard_errors_match_simulation) but nothing divides by it: statistic is the
  absolute test's, with the sign of the lift.

Welch's degrees of freedom (Welch-Satterthwaite) are those of the absolute difference for both scales. These
tests are valid when the analysis happens once, at the planned sample size; for daily looks use `sequential`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from scipy import special

from experiments.stats.precision import precision
from experiments.stats.results import (
    OUT_OF_RANGE, ErrorCode, LiftResult, failed_lift, finite_or_none, never_raises,
)
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
    for role, stat in (("control", control), ("treatment", treatment)):
        if not (math.isfinite(stat.estimate) and math.isfinite(stat.estimate_variance)):
            return failed_lift(method, relative, alpha, ErrorCode.INVALID_STATISTIC, f"The {role} arm: {OUT_OF_RANGE}")
    if relative and control.estimate == 0:
        return failed_lift(method, relative, alpha, ErrorCode.ZERO_CONTROL_MEAN,
                           "The control mean is 0, so a relative lift is undefined; use the absolute lift.")
    if control.estimate_variance + treatment.estimate_variance <= 0:
        return failed_lift(method, relative, alpha, ErrorCode.ZERO_VARIANCE,
                           "Both arms have zero variance (every unit has the same value); no test is possible.")
    if relative and treatment.estimate == 0:
        return failed_lift(method, relative, alpha, ErrorCode.INSUFFICIENT_DATA,
                           "The treatment arm has no events yet (its mean is 0): the relative lift would be -100 % "
                           "with no usable interval. Wait for events, or read the absolute lift, which is tested.")
    return None


def fieller_interval(control: float, treatment: float, var_control: float, var_treatment: float,
                     critical: float) -> tuple[float, float] | None:
    """Fieller's interval for mu_t / mu_c from independent estimates, or None when it is unbounded.

    Worked in units of the control mean (a = Var(c)/c^2, b = Var(t)/c^2, r = t/c), so a control mean of
    1e-90 does not underflow when squared:  rho = (r +- k sqrt(a r^2 + (1 - g) b)) / (1 - g),  g = k^2 a.
    """
    r = treatment / control
    sd_c, sd_t = math.sqrt(var_control) / abs(control), math.sqrt(var_treatment) / abs(control)
    a, b = sd_c * sd_c, sd_t * sd_t     # products overflow to inf (caught below); ** 2 would raise
    g = critical * critical * a
    if not g < 1.0:     # also catches NaN
        return None
    half = critical * math.sqrt(a * r * r + (1.0 - g) * b) / (1.0 - g)
    centre = r / (1.0 - g)
    return centre - half, centre + half


def relative_standard_error_of_lift(control: Statistic, treatment: Statistic) -> float:
    """Delta-method standard error of t/c - 1, sqrt(Var(t)/c^2 + t^2 Var(c)/c^4), in units of c so that tiny
    control means do not underflow. Descriptive only: no test or interval divides by it (see the module doc)."""
    c = control.estimate
    r = treatment.estimate / c
    sd_c = math.sqrt(control.estimate_variance) / abs(c)
    sd_t = math.sqrt(treatment.estimate_variance) / abs(c)
    return math.sqrt(sd_t * sd_t + r * r * sd_c * sd_c)


def lift_result(method: str, control: Statistic, treatment: Statistic, relative: bool, alpha: float, *,
                critical: float, p_value_of: Callable[[float], float], df: float | None = None,
                null_variance: float | None = None) -> LiftResult:
    """The result of a two-sided test of t - c = 0 that rejects when |t - c| > critical * sqrt(null_variance).

    null_variance is the variance the test's statistic uses (default Var(t) + Var(c); the proportion test's
    pooled one). The absolute interval is lift +- critical * sqrt(Var(t) + Var(c)); the relative one is
    Fieller's with its critical value scaled so that at rho = 1 it reproduces this test's decision exactly.
    """
    c, t = control.estimate, treatment.estimate
    variance = control.estimate_variance + treatment.estimate_variance
    se = math.sqrt(variance)
    null_se = se if null_variance is None else math.sqrt(null_variance)
    z = (t - c) / null_se
    p_value = p_value_of(z)
    if relative:
        interval = fieller_interval(c, t, control.estimate_variance, treatment.estimate_variance,
                                    critical * null_se / se)
        if interval is None:
            return failed_lift(method, relative, alpha, ErrorCode.INSUFFICIENT_DATA,
                               "The control mean is within the critical value's reach of 0 (its standard error "
                               "is too large a share of it), so the relative interval is unbounded; collect "
                               "more units, or read the absolute lift, which is tested.")
        lift, low, high = t / c - 1.0, interval[0] - 1.0, interval[1] - 1.0
        standard_error, statistic = relative_standard_error_of_lift(control, treatment), (z if c > 0 else -z)
    else:
        lift, standard_error, statistic = t - c, se, z
        low, high = lift - critical * se, lift + critical * se
    numbers = {"control_value": c, "treatment_value": t, "lift": lift, "standard_error": standard_error,
               "ci_low": low, "ci_high": high, "statistic": statistic, "p_value": p_value}
    if not all(math.isfinite(v) for v in numbers.values()):
        return failed_lift(method, relative, alpha, ErrorCode.INVALID_STATISTIC, OUT_OF_RANGE)
    check = precision(control, treatment)
    return LiftResult(method=method, relative=relative, alpha=alpha, df=finite_or_none(df), **numbers,
                      precise=check.precise, relative_standard_errors=check.relative_standard_errors,
                      units_needed=check.units_needed, precision_reason=check.reason)


def welch_df(control: Statistic, treatment: Statistic) -> float:
    """Welch-Satterthwaite, written in shares of the total variance so tiny variances do not underflow."""
    vc, vt = control.estimate_variance, treatment.estimate_variance
    share_c, share_t = vc / (vc + vt), vt / (vc + vt)
    return 1.0 / (share_c * share_c / (control.n - 1) + share_t * share_t / (treatment.n - 1))


def _normal_p(z: float) -> float:
    return float(2.0 * special.ndtr(-abs(z)))


@never_raises("welch_t")
def welch_t_test(control: Statistic, treatment: Statistic, *, relative: bool = False,
                 alpha: float = 0.05) -> LiftResult:
    """Welch's unequal-variance t-test (matches scipy.stats.ttest_ind(equal_var=False) for absolute lift)."""
    failed = check_pair("welch_t", control, treatment, relative, alpha)
    if failed:
        return failed
    df = welch_df(control, treatment)
    critical = float(special.stdtrit(df, 1 - alpha / 2))
    return lift_result("welch_t", control, treatment, relative, alpha, critical=critical,
                       p_value_of=lambda z: float(2.0 * special.stdtr(df, -abs(z))), df=df)


@never_raises("z")
def z_test(control: Statistic, treatment: Statistic, *, relative: bool = False, alpha: float = 0.05) -> LiftResult:
    """Large-sample z-test; the usual choice for ratio metrics, whose variance is a delta-method estimate."""
    failed = check_pair("z", control, treatment, relative, alpha)
    if failed:
        return failed
    return lift_result("z", control, treatment, relative, alpha, critical=float(-special.ndtri(alpha / 2)),
                       p_value_of=_normal_p)


@never_raises("proportion_z")
def proportion_z_test(control: Proportion, treatment: Proportion, *, relative: bool = False,
                      alpha: float = 0.05) -> LiftResult:
    """Two-proportion z-test.

    The statistic uses the pooled proportion under H0 (as statsmodels proportions_ztest), for both lifts.
    Absolute interval: the unpooled Wald interval (as statsmodels confint_proportions_2indep(method="wald")),
    which can disagree with the pooled p-value at the boundary. Relative interval: Fieller's with the
    critical value scaled by pooled / unpooled standard error, so it excludes 0 exactly when p < alpha.
    """
    failed = check_pair("proportion_z", control, treatment, relative, alpha)
    if failed:
        return failed
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    null_variance = pooled * (1 - pooled) * (1 / control.n + 1 / treatment.n)
    return lift_result("proportion_z", control, treatment, relative, alpha, critical=float(-special.ndtri(alpha / 2)),
                       p_value_of=_normal_p, null_variance=null_variance)
