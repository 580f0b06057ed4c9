"""CUPED: variance reduction with a pre-experiment covariate (Deng, Xu, Kohavi & Walker 2013), one model.

Every CUPED estimate of the engine goes through `regression_adjust` on `CovariateSums`: a per-unit metric
m / d (d = 1 for a mean), its pre-period value x, and an indicator z that the unit has pre-period data. A plain
`CupedStatistic` (a mean y with a covariate x that every unit has) is the special case d = 1, z = 1, and is
converted to these sums, so the report (ratios from the event log) and `abgate stats` (sums from any
warehouse) adjust in exactly the same way.

theta is estimated once from both arms pooled (the metric centred within its arm, regressed on the covariates),
so the adjustment is the same function of x in every arm. Because x was measured before assignment
its mean does not depend on the arm, so the adjusted estimates stay unbiased while their variance shrinks by
about 1 - corr(x, y)^2. theta (and the pooled mean of x) is treated as known, the usual large-sample
simplification. A constant covariate gives no adjustment, not an error.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from experiments.stats.frequentist import welch_t_test, z_test
from experiments.stats.results import ErrorCode, LiftResult, failed_lift
from experiments.stats.sequential import DEFAULT_TUNING, sequential_test
from experiments.stats.statistics import CupedStatistic, Estimate, RatioStatistic

# -- Regression adjustment from the event log (ratio or mean metrics, a covariate with missing values) ----------
#
# The report's primary metric is usually a ratio (CTR = clicks / impressions per unit), and some units have no
# pre-period data. Following Deng et al. (2013, section 3.4: units without pre-period data get covariate 0 and an
# indicator) and the delta method for ratios (Deng, Knoblich & Lu 2018), each unit's influence on its arm's
# ratio R = sum m / sum d is linearised, phi_i = (m_i - R d_i) / mean(d) (d = 1 for a mean metric: phi is
# y - mean), and phi is regressed on w_i = (x_i, z_i): x the unit's pre-period value of the metric (0 without
# data), z = 1 when it has pre-period impressions. theta = S_ww^-1 S_wphi from both arms pooled; per arm
#     adjusted R = R - theta . (mean_arm(w) - mean_pooled(w)),  unit variance = var(phi - theta . w)  (ddof 1)
# which is what an OLS of phi on (1, x, z) gives when run on the raw per-unit data (tests/test_cuped.py checks
# this against numpy). A covariate column without variance (every unit has data, or none does) is dropped.

COVARIATE_FIELDS = ("n", "m_sum", "m_sum_squares", "d_sum", "d_sum_squares", "md_sum", "x_sum", "x_sum_squares",
                    "z_sum", "xz_sum", "mx_sum", "dx_sum", "mz_sum", "dz_sum")


@dataclass(frozen=True)
class CovariateSums:
    """One arm's sums of a per-unit metric m / d (d = 1 for a mean) and its pre-period covariate x and
    indicator z (z^2 = z, so no sum of z^2)."""

    n: int
    m_sum: float
    m_sum_squares: float
    d_sum: float
    d_sum_squares: float
    md_sum: float
    x_sum: float
    x_sum_squares: float
    z_sum: float
    xz_sum: float
    mx_sum: float
    dx_sum: float
    mz_sum: float
    dz_sum: float

    @property
    def metric(self) -> RatioStatistic:
        """The plain (unadjusted) metric: the first six sums are a RatioStatistic's."""
        return RatioStatistic(self.n, self.m_sum, self.m_sum_squares, self.d_sum, self.d_sum_squares, self.md_sum)

    def problem(self):
        return self.metric.problem()


@dataclass(frozen=True)
class RegressionAdjustment:
    control: Estimate | None
    treatment: Estimate | None
    plain_control: Estimate | None
    plain_treatment: Estimate | None
    theta: tuple[float, ...]           # coefficients of the covariates used, in the order of `covariates`
    covariates: tuple[str, ...]        # ("pre_value", "has_pre_data"), a subset, or () when skipped
    variance_reduction: float | None   # 1 - Var(adjusted lift) / Var(plain lift)
    reason: str | None = None          # why there is no adjustment


def _arm_moments(s: CovariateSums) -> tuple[float, float, float, float, float]:
    """(R, sum phi^2, sum phi x, sum phi z, mean d) of one arm; sum phi = 0 by construction."""
    mean_d = s.d_sum / s.n
    metric = s.metric
    # sum phi = 0, so the centred sum of squares (the delta-method variance) is also the uncentred one
    r, phi2 = metric.ratio, metric.unit_variance * (s.n - 1)
    return r, phi2, (s.mx_sum - r * s.dx_sum) / mean_d, (s.mz_sum - r * s.dz_sum) / mean_d, mean_d


def _w_scatter(n: float, x: float, xx: float, z: float, xz: float) -> list[list[float]]:
    """Centred scatter matrix of w = (x, z) from sums (z^2 = z)."""
    return [[xx - x * x / n, xz - x * z / n], [xz - x * z / n, z - z * z / n]]


def regression_adjust(control: CovariateSums, treatment: CovariateSums) -> RegressionAdjustment:
    def skipped(reason: str, plain=(None, None)) -> RegressionAdjustment:
        return RegressionAdjustment(None, None, *plain, (), (), None, reason)

    for role, s in (("control", control), ("treatment", treatment)):
        if s.n < 2 or s.d_sum <= 0:
            return skipped(f"The {role} arm has {s.n} unit(s) or no denominator; nothing to adjust.")
    arms = (control, treatment)
    moments = [_arm_moments(s) for s in arms]
    plain = tuple(Estimate(s.n, s.metric.ratio, s.metric.unit_variance) for s in arms)
    if plain[0].estimate_variance + plain[1].estimate_variance <= 0:
        return skipped("Both arms have zero variance: there is no noise for a covariate to remove.", plain)
    if control.z_sum + treatment.z_sum == 0:
        return skipped("No unit has impressions in the pre-period, so there is no covariate to adjust with.", plain)
    n = control.n + treatment.n
    pooled = [sum(getattr(s, f) for s in arms) for f in ("x_sum", "x_sum_squares", "z_sum", "xz_sum")]
    sww = _w_scatter(n, *pooled)
    swphi = [sum(mo[2] for mo in moments), sum(mo[3] for mo in moments)]
    # Keep the covariates that vary; drop z when it is (nearly) collinear with x (all pre values equal).
    use = [i for i in (0, 1) if sww[i][i] > 1e-12 * max(pooled[1 + i], 1e-300)]  # vs sum x^2, sum z
    if len(use) == 2 and sww[0][0] * sww[1][1] - sww[0][1] ** 2 <= 1e-9 * sww[0][0] * sww[1][1]:
        use = [0]
    if not use:
        return skipped("The pre-period covariate is the same for every unit; it cannot explain any variance.",
                       plain)
    if len(use) == 2:
        det = sww[0][0] * sww[1][1] - sww[0][1] ** 2
        theta = [(sww[1][1] * swphi[0] - sww[0][1] * swphi[1]) / det,
                 (sww[0][0] * swphi[1] - sww[0][1] * swphi[0]) / det]
    else:
        theta = [0.0, 0.0]
        theta[use[0]] = swphi[use[0]] / sww[use[0]][use[0]]
    mean_w = [pooled[0] / n, pooled[2] / n]
    adjusted = []
    for s, (r, phi2, phix, phiz, _) in zip(arms, moments):
        arm_w = [s.x_sum / s.n, s.z_sum / s.n]
        estimate = r - sum(theta[i] * (arm_w[i] - mean_w[i]) for i in (0, 1))
        # sum over the arm of (phi - theta . (w - mean_arm(w)))^2
        a = _w_scatter(s.n, s.x_sum, s.x_sum_squares, s.z_sum, s.xz_sum)
        quad = sum(theta[i] * a[i][j] * theta[j] for i in (0, 1) for j in (0, 1))
        ss = phi2 - 2 * (theta[0] * phix + theta[1] * phiz) + quad
        adjusted.append(Estimate(s.n, estimate, max(ss, 0.0) / (s.n - 1)))
    before = plain[0].estimate_variance + plain[1].estimate_variance
    after = adjusted[0].estimate_variance + adjusted[1].estimate_variance
    names = ("pre_value", "has_pre_data")
    return RegressionAdjustment(adjusted[0], adjusted[1], *plain, tuple(theta[i] for i in use),
                                tuple(names[i] for i in use), 1.0 - after / before if before > 0 else None)


def as_covariate_sums(stat: CupedStatistic | CovariateSums) -> CovariateSums:
    """A mean metric y with a covariate x that every unit has: d = 1 and z = 1 for every unit."""
    if isinstance(stat, CovariateSums):
        return stat
    n = stat.n
    return CovariateSums(n, stat.y_sum, stat.y_sum_squares, n, n, stat.y_sum, stat.x_sum, stat.x_sum_squares,
                         n, stat.x_sum, stat.xy_sum, stat.x_sum, stat.y_sum, n)


def cuped_adjust(control: CupedStatistic | CovariateSums,
                 treatment: CupedStatistic | CovariateSums) -> RegressionAdjustment:
    """The CUPED-adjusted estimates of both arms (and the plain ones), from the one regression model."""
    return regression_adjust(as_covariate_sums(control), as_covariate_sums(treatment))


TESTS = {"welch_t": welch_t_test, "z": z_test}


def cuped_test(control: CupedStatistic | CovariateSums, treatment: CupedStatistic | CovariateSums, *,
               relative: bool = False, alpha: float = 0.05, test: str = "welch_t",
               tuning: float = DEFAULT_TUNING) -> LiftResult:
    """Run `test` ("welch_t", "z" or "sequential") on the CUPED-adjusted estimates; method gets a "cuped_"
    prefix. When there is nothing to adjust with (a constant covariate), the plain estimates are tested."""
    method = f"cuped_{test}"
    if test not in (*TESTS, "sequential"):
        raise ValueError(f"unknown test {test!r}; use welch_t, z or sequential")
    for role, stat in (("control", control), ("treatment", treatment)):
        problem = stat.problem()
        if problem:
            return failed_lift(method, relative, alpha, problem[0], f"The {role} arm: {problem[1]}")
    adjustment = cuped_adjust(control, treatment)
    c = adjustment.control or adjustment.plain_control
    t = adjustment.treatment or adjustment.plain_treatment
    if c is None or t is None:
        return failed_lift(method, relative, alpha, ErrorCode.TOO_FEW_UNITS, adjustment.reason or "nothing to test")
    if test == "sequential":
        result = sequential_test(c, t, relative=relative, alpha=alpha, tuning=tuning)
    else:
        result = TESTS[test](c, t, relative=relative, alpha=alpha)
    return replace(result, method=method)
