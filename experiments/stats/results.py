"""Frozen result types of the statistics engine.

Impossible inputs (no units, zero variance, a missing arm, a zero control mean for a relative lift, sums
too large or too small for floating point) do not raise: the result carries a stable `ErrorCode` and a
sentence in `reason`, and every number is None. So a report can print "not enough data" instead of a NaN
dressed up as a verdict. Exceptions are kept for programmer errors (alpha outside (0, 1), an unknown method
name).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class ErrorCode(StrEnum):
    """Stable codes: dashboards and clients match on these strings, so never rename one."""

    NO_UNITS = "no_units"                      # an arm has n == 0
    TOO_FEW_UNITS = "too_few_units"            # n < 2: no sample variance
    ZERO_VARIANCE = "zero_variance"            # both arms constant: the standard error is 0
    ZERO_CONTROL_MEAN = "zero_control_mean"    # relative lift divides by the control mean
    ZERO_DENOMINATOR = "zero_denominator"      # ratio metric with a denominator sum of 0
    INVALID_STATISTIC = "invalid_statistic"    # negative n, sums that no data could produce, inf/NaN
    MISSING_ARM = "missing_arm"                # the metric has no sums for an arm (or the control)
    INVALID_WEIGHTS = "invalid_weights"        # SRM: planned weights missing, negative or all zero
    INSUFFICIENT_DATA = "insufficient_data"    # relative lift: an arm without events, or a control mean too
                                               # imprecise to divide by (its interval is unbounded)


def finite_or_none(value: float | None) -> float | None:
    """Numbers leave the engine finite or as None, never NaN/inf (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _to_dict(obj) -> dict:
    out = asdict(obj)
    for key, value in out.items():
        if isinstance(value, StrEnum):
            out[key] = str(value)
    return out


@dataclass(frozen=True)
class LiftResult:
    """A treatment-vs-control comparison of one metric.

    lift is treatment - control (absolute) or treatment / control - 1 (relative); [ci_low, ci_high] is the
    (1 - alpha) interval for it; df is None for normal-theory methods. For a relative lift, p_value and
    statistic are those of the absolute difference (same null hypothesis, treatment == control), the interval
    is Fieller's (it excludes 0 exactly when p_value < alpha), and standard_error is the delta-method one,
    shown for information only (docs/statistics.md).

    precise says whether both arms' estimates are precise enough to trust the normal approximation (relative
    standard error <= 0.1 each, see `precision.py`); when False, precision_reason says what is missing and
    units_needed how many more units per arm that takes at the current rate (None when an arm has no events:
    then it cannot be extrapolated). A report should call an imprecise result "insufficient data", not a
    verdict. relative_standard_errors is (control, treatment); None for an arm whose estimate is 0.
    """

    method: str
    relative: bool
    alpha: float
    control_value: float | None = None
    treatment_value: float | None = None
    lift: float | None = None
    standard_error: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    statistic: float | None = None
    p_value: float | None = None
    df: float | None = None
    error: ErrorCode | None = None
    reason: str | None = None
    precise: bool | None = None
    relative_standard_errors: tuple[float | None, float | None] | None = None
    units_needed: int | None = None
    precision_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def significant(self) -> bool | None:
        """None when there is no result: 'unknown' must not read as 'no effect'."""
        return None if self.p_value is None else self.p_value < self.alpha

    def to_dict(self) -> dict:
        return _to_dict(self) | {"significant": self.significant}


@dataclass(frozen=True)
class SrmResult:
    """Sample-ratio-mismatch check: a chi-square goodness of fit of units per arm against planned weights."""

    threshold: float
    observed: dict[str, int] = field(default_factory=dict)
    expected: dict[str, float] = field(default_factory=dict)
    statistic: float | None = None
    df: int | None = None
    p_value: float | None = None
    error: ErrorCode | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def alert(self) -> bool | None:
        """True withholds the verdict: the assignment or the logging is broken, so no lift can be trusted."""
        return None if self.p_value is None else self.p_value < self.threshold

    def to_dict(self) -> dict:
        return _to_dict(self) | {"alert": self.alert}


@dataclass(frozen=True)
class BayesianResult:
    """Probability that treatment beats control, under a flat prior and a normal approximation."""

    relative: bool
    lift: float | None = None
    standard_error: float | None = None
    probability_to_beat_control: float | None = None
    credible_low: float | None = None
    credible_high: float | None = None
    error: ErrorCode | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return _to_dict(self)


def failed_lift(method: str, relative: bool, alpha: float, error: ErrorCode, reason: str) -> LiftResult:
    return LiftResult(method=method, relative=relative, alpha=alpha, error=error, reason=reason)


OUT_OF_RANGE = ("The sums are too large or too small for floating-point arithmetic (a square or a product "
                "overflows); rescale the metric, e.g. seconds instead of microseconds, and send the sums again.")


def never_raises(method: str | Callable[[dict], str]):
    """Wrap a test so arithmetic on extreme but finite data (1e300 sums, 1e-200 means) gives an
    `invalid_statistic` result instead of an OverflowError: the engine promises never to raise on data, and
    no list of guards covers every product of floats. Programmer errors (ValueError) still raise."""
    def wrap(test):
        @functools.wraps(test)
        def guarded(*args, **kwargs):
            try:
                return test(*args, **kwargs)
            except ArithmeticError:
                name = method(kwargs) if callable(method) else method
                return failed_lift(name, bool(kwargs.get("relative", False)), kwargs.get("alpha", 0.05),
                                   ErrorCode.INVALID_STATISTIC, OUT_OF_RANGE)
        return guarded
    return wrap
