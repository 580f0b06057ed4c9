"""Sample-ratio mismatch: do the units per arm match the planned weights?

A chi-square goodness-of-fit test of observed units per arm against total * weight / sum(weights), with
k - 1 degrees of freedom. A p-value below 0.001 raises the alert, and a report must then withhold its
verdict: a skewed split means assignment, redirects or logging lose units selectively, which biases every
metric in a way no test can correct. The strict threshold keeps false alarms rare over daily checks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from scipy import special

from experiments.stats.results import ErrorCode, SrmResult, finite_or_none

SRM_THRESHOLD = 0.001


def srm_check(observed: Mapping[str, int], weights: Mapping[str, float], *,
              threshold: float = SRM_THRESHOLD) -> SrmResult:
    """Chi-square SRM test. An arm in `weights` but not in `observed` counts as 0 units."""
    def failed(code: ErrorCode, reason: str) -> SrmResult:
        return SrmResult(threshold=threshold, observed=counts, error=code, reason=reason)

    counts: dict[str, int] = {}
    try:
        raw = {arm: float(observed.get(arm, 0)) for arm in weights}
        weight_values = [float(w) for w in weights.values()]
    except (OverflowError, TypeError, ValueError):
        return failed(ErrorCode.INVALID_STATISTIC, "Unit counts and weights must be numbers within float range.")
    if any(not math.isfinite(c) or c != int(c) for c in raw.values()):
        return failed(ErrorCode.INVALID_STATISTIC, "Unit counts must be finite whole numbers.")
    counts = {arm: int(c) for arm, c in raw.items()}

    extra = sorted(set(observed) - set(weights))
    if extra:
        return failed(ErrorCode.INVALID_WEIGHTS, f"Units were counted for arm(s) {extra} that have no planned weight.")
    if len(weights) < 2:
        return failed(ErrorCode.INVALID_WEIGHTS, "An SRM check needs at least two arms with planned weights.")
    if any(not math.isfinite(w) or w <= 0 for w in weight_values):
        return failed(ErrorCode.INVALID_WEIGHTS, "Every planned weight must be a positive number.")
    if any(c < 0 for c in counts.values()):
        return failed(ErrorCode.INVALID_STATISTIC, "Unit counts cannot be negative.")
    total = sum(counts.values())
    if total == 0:
        return failed(ErrorCode.NO_UNITS, "No units have been assigned yet.")
    weight_sum = sum(weight_values)
    expected = {arm: total * w / weight_sum for arm, w in zip(weights, weight_values)}
    if not all(math.isfinite(e) and e > 0 for e in expected.values()):
        return failed(ErrorCode.INVALID_WEIGHTS, "The weights are too far apart (or the counts too large) for "
                                                 "floating point; give weights on a similar scale.")
    statistic = sum((counts[arm] - e) * (counts[arm] - e) / e for arm, e in expected.items())
    df = len(weights) - 1
    return SrmResult(threshold=threshold, observed=counts, expected=expected, statistic=finite_or_none(statistic),
                     df=df, p_value=finite_or_none(special.chdtrc(df, statistic)))
