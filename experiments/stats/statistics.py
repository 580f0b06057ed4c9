"""Sufficient statistics: the few sums per arm that SQL aggregates to and every method needs.

Each type is frozen and exposes the same small interface the tests consume:

    n                  units (the randomisation unit: a user or a session)
    estimate           the metric's point estimate (a mean, a proportion, or a ratio of sums)
    unit_variance      per-unit variance of the estimate (sample variance, ddof=1; delta method for ratios)
    estimate_variance  unit_variance / n: the variance of the estimate itself
    problem()          None, or (ErrorCode, sentence) when no test can use these sums

Properties never raise and never return NaN: with n == 0 the estimate is 0.0 and problem() says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.stats.results import OUT_OF_RANGE, ErrorCode

Problem = tuple[ErrorCode, str] | None

# Sums of squares minus n*mean^2 cancel catastrophically; a "negative variance" smaller than this share of
# the raw second moment is rounding, larger is sums that no data could have produced.
_ROUNDING = 1e-9


def _centred(n: int, sum_a: float, sum_b: float, sum_ab: float) -> float:
    """Sample (co)variance (ddof=1) from raw sums; 0.0 below two units."""
    if n < 2:
        return 0.0
    return (sum_ab - sum_a * sum_b / n) / (n - 1)


def _variance(n: int, total: float, squares: float) -> float:
    value = _centred(n, total, total, squares)
    return 0.0 if value < 0 and -value <= _ROUNDING * max(abs(squares), 1.0) / max(n - 1, 1) else value


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except (OverflowError, TypeError):     # an int beyond float range, or not a number at all
        return False


def _out_of_range(*values: float) -> Problem:
    """Derived numbers (a variance from 1e200 sums) can overflow even when every sum is finite."""
    if all(_finite(v) for v in values):
        return None
    return ErrorCode.INVALID_STATISTIC, OUT_OF_RANGE


def _basic_problem(name: str, n: float, *values: float) -> Problem:
    if not all(_finite(v) for v in (n, *values)):
        return ErrorCode.INVALID_STATISTIC, f"{name} contains a non-finite number; send finite sums."
    if n < 0 or n != int(n):
        return ErrorCode.INVALID_STATISTIC, f"{name} has n={n}; n must be a whole number >= 0."
    if n == 0:
        return ErrorCode.NO_UNITS, f"{name} has no units yet."
    if n < 2:
        return ErrorCode.TOO_FEW_UNITS, f"{name} has {int(n)} unit; at least 2 are needed for a variance."
    return None


@dataclass(frozen=True)
class SampleMean:
    """A per-unit metric averaged over units: n units, sum of values, sum of squared values."""

    n: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n > 0 else 0.0

    @property
    def variance(self) -> float:
        return _variance(self.n, self.sum, self.sum_squares)

    estimate = mean
    unit_variance = variance

    @property
    def estimate_variance(self) -> float:
        return self.unit_variance / self.n if self.n > 0 else 0.0

    def problem(self) -> Problem:
        basic = _basic_problem("SampleMean", self.n, self.sum, self.sum_squares)
        if basic:
            return basic
        if _out_of_range(self.mean, self.variance):
            return _out_of_range(self.mean, self.variance)
        if self.variance < 0:
            return ErrorCode.INVALID_STATISTIC, "sum_squares is smaller than sum^2/n, which no data can give."
        return None


@dataclass(frozen=True)
class Proportion:
    """A 0/1 metric per unit: n units of which `successes` had the event.

    The variance is p(1-p) (maximum likelihood, ddof=0), the convention of the proportion z-test.
    """

    n: int
    successes: float

    @property
    def mean(self) -> float:
        return self.successes / self.n if self.n > 0 else 0.0

    estimate = mean

    @property
    def unit_variance(self) -> float:
        p = self.mean
        return p * (1.0 - p)

    variance = unit_variance

    @property
    def estimate_variance(self) -> float:
        return self.unit_variance / self.n if self.n > 0 else 0.0

    def problem(self) -> Problem:
        basic = _basic_problem("Proportion", self.n, self.successes)
        if basic:
            return basic
        if not 0 <= self.successes <= self.n:
            return ErrorCode.INVALID_STATISTIC, f"successes={self.successes} is outside 0..n={self.n}."
        return None


@dataclass(frozen=True)
class RatioStatistic:
    """A ratio of per-unit sums, e.g. CTR = clicks / impressions with the user as the unit.

    The estimate is m_sum / d_sum. Units are independent but a unit's impressions are not, so the variance
    comes from the delta method over per-unit (m_i, d_i) pairs (Deng et al. 2018, "Applying the Delta
    Method in Metric Analytics"):  Var(M/D) ~ (s_m^2 - 2 r s_md + r^2 s_d^2) / (mu_d^2 n).
    """

    n: int
    m_sum: float
    m_sum_squares: float
    d_sum: float
    d_sum_squares: float
    md_sum: float

    @property
    def numerator(self) -> SampleMean:
        return SampleMean(self.n, self.m_sum, self.m_sum_squares)

    @property
    def denominator(self) -> SampleMean:
        return SampleMean(self.n, self.d_sum, self.d_sum_squares)

    @property
    def covariance(self) -> float:
        return _centred(self.n, self.m_sum, self.d_sum, self.md_sum)

    @property
    def ratio(self) -> float:
        return self.m_sum / self.d_sum if self.d_sum != 0 else 0.0

    estimate = ratio

    @property
    def unit_variance(self) -> float:
        if self.n < 2 or self.d_sum == 0:
            return 0.0
        r, mu_d = self.ratio, self.d_sum / self.n
        value = (self.numerator.variance - 2 * r * self.covariance + r * r * self.denominator.variance) / (mu_d * mu_d)
        return max(value, 0.0)  # exact linearised variance is >= 0; a tiny negative is rounding

    @property
    def estimate_variance(self) -> float:
        return self.unit_variance / self.n if self.n > 0 else 0.0

    def problem(self) -> Problem:
        basic = _basic_problem("RatioStatistic", self.n, self.m_sum, self.m_sum_squares, self.d_sum,
                               self.d_sum_squares, self.md_sum)
        if basic:
            return basic
        if self.d_sum == 0:
            return ErrorCode.ZERO_DENOMINATOR, "the denominator sum is 0, so the ratio is undefined."
        if _out_of_range(self.ratio, self.numerator.variance, self.denominator.variance, self.covariance,
                         self.unit_variance):
            return ErrorCode.INVALID_STATISTIC, OUT_OF_RANGE
        if self.numerator.variance < 0 or self.denominator.variance < 0:
            return ErrorCode.INVALID_STATISTIC, "a sum of squares is smaller than sum^2/n, which no data can give."
        return None


@dataclass(frozen=True)
class CupedStatistic:
    """A per-unit metric y with its pre-experiment covariate x (the same metric before the start, usually)."""

    n: int
    y_sum: float
    y_sum_squares: float
    x_sum: float
    x_sum_squares: float
    xy_sum: float

    @property
    def post(self) -> SampleMean:
        return SampleMean(self.n, self.y_sum, self.y_sum_squares)

    @property
    def pre(self) -> SampleMean:
        return SampleMean(self.n, self.x_sum, self.x_sum_squares)

    @property
    def covariance(self) -> float:
        return _centred(self.n, self.x_sum, self.y_sum, self.xy_sum)

    def problem(self) -> Problem:
        basic = _basic_problem("CupedStatistic", self.n, self.y_sum, self.y_sum_squares, self.x_sum,
                               self.x_sum_squares, self.xy_sum)
        if basic:
            return basic
        if _out_of_range(self.post.mean, self.post.variance, self.pre.mean, self.pre.variance, self.covariance):
            return ErrorCode.INVALID_STATISTIC, OUT_OF_RANGE
        if self.post.variance < 0 or self.pre.variance < 0:
            return ErrorCode.INVALID_STATISTIC, "a sum of squares is smaller than sum^2/n, which no data can give."
        return None


@dataclass(frozen=True)
class Estimate:
    """A ready-made estimate with its per-unit variance (what CUPED hands to the tests)."""

    n: int
    estimate: float
    unit_variance: float

    @property
    def estimate_variance(self) -> float:
        return self.unit_variance / self.n if self.n > 0 else 0.0

    def problem(self) -> Problem:
        basic = _basic_problem("Estimate", self.n, self.estimate, self.unit_variance)
        if basic:
            return basic
        if self.unit_variance < 0:
            return ErrorCode.INVALID_STATISTIC, "unit_variance is negative."
        return None


# What the tests accept: anything with n, estimate, unit_variance, estimate_variance and problem().
Statistic = SampleMean | Proportion | RatioStatistic | Estimate
