"""Frozen result types of the statistics engine.

Impossible inputs (no units, zero variance, a missing arm, a zero control mean for a relative lift) do not
raise: the result carries a stable `ErrorCode` and a sentence in `reason`, and every number is None. So a
report can print "not enough data" instead of a NaN dressed up as a verdict. Exceptions are kept for
programmer errors (alpha outside (0, 1), an unknown method name).
"""

from __future__ import annotations

import math
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
    (1 - alpha) interval for it; df is None for normal-theory methods.
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
