"""Withhold until precise: is each arm's estimate precise enough to trust the normal approximation?

Rule: both arms' relative standard errors, se(estimate) / |estimate|, are at most 0.1.

Why this rule: every test in the engine treats each arm's estimate as normal (the CLT), and a relative lift
also divides by the control's estimate. On skewed or sparse metrics the CLT arrives late, and an interval
can look tight long before it is right: A/A simulations (tests/test_stats_aa.py) of a lognormal (sigma 2)
metric at 200 units per arm, or a 1 % binary metric with a handful of events, are exactly where tests went
wrong. The relative standard error measures how far the estimate is from that regime in a scale-free way:

    binary metric, rate p:  RSE = sqrt((1 - p) / (n p))   ->  <= 0.1 means about 100 events per arm
                                                              (100 (1 - p) exactly)
    any metric:             RSE = CV / sqrt(n)            ->  n >= 100 CV^2 (lognormal sigma 2: CV^2 = 53.6,
                                                              so about 5,400 units per arm)

An arm whose estimate is 0 (no events) has no finite RSE and is never precise. The rule is about each arm's
level, so for a metric that can be negative or centre on 0 it speaks for the relative lift only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from experiments.stats.statistics import Proportion, Statistic

MAX_RELATIVE_STANDARD_ERROR = 0.1


@dataclass(frozen=True)
class Precision:
    precise: bool
    relative_standard_errors: tuple[float | None, float | None]   # (control, treatment)
    units_needed: int | None     # more units per arm (the worse arm, at its current rate); None: no events yet
    reason: str | None           # why not precise, in words a report can show


def relative_standard_error(stat: Statistic) -> float | None:
    """se(estimate) / |estimate|; None when the estimate is 0 (no events) or a number is not finite."""
    estimate, variance = stat.estimate, stat.estimate_variance
    if estimate == 0 or not (math.isfinite(estimate) and math.isfinite(variance)) or variance < 0:
        return None
    value = math.sqrt(variance) / abs(estimate)
    return value if math.isfinite(value) else None


def _arm_shortfall(role: str, stat: Statistic, rse: float | None) -> tuple[float | None, str | None]:
    """(more units this arm needs, sentence), or (0, None) when it is precise already."""
    if rse is not None and rse <= MAX_RELATIVE_STANDARD_ERROR:
        return 0.0, None
    if rse is None:
        if isinstance(stat, Proportion):
            return None, f"the {role} arm has no events yet; about 100 are needed"
        return None, f"the {role} arm's estimate is 0 (no events yet), so its precision cannot be judged"
    # RSE falls as 1/sqrt(n) at a constant per-unit variance: n_needed = n (rse / max)^2.
    ratio = rse / MAX_RELATIVE_STANDARD_ERROR
    needed = stat.n * ratio * ratio      # a product, not ** 2: huge values become inf instead of raising
    more = max(math.ceil(needed - stat.n), 1) if math.isfinite(needed) else None
    text = f"the {role} arm's relative standard error is {rse:.2g} (> {MAX_RELATIVE_STANDARD_ERROR:g})"
    if isinstance(stat, Proportion) and stat.n > 0:
        events = max(math.ceil(MAX_RELATIVE_STANDARD_ERROR ** -2 * (1 - stat.mean) - stat.successes), 1)
        text += f": about {events} more events are needed ({int(stat.successes)} so far)"
    elif more is not None:
        text += f": about {more:,} more units are needed at the current variance"
    return more, text


def precision(control: Statistic, treatment: Statistic) -> Precision:
    """The precision verdict of a pair of arms (both must have passed problem())."""
    rses = (relative_standard_error(control), relative_standard_error(treatment))
    shortfalls = [_arm_shortfall(role, stat, rse)
                  for role, stat, rse in (("control", control, rses[0]), ("treatment", treatment, rses[1]))]
    reasons = [text for _, text in shortfalls if text]
    if not reasons:
        return Precision(True, rses, 0, None)
    more = [units for units, _ in shortfalls]
    needed = None if any(units is None for units in more) else int(max(more))
    reason = "Insufficient data: " + "; ".join(reasons) + ". Until then the normal approximation is not trusted."
    return Precision(False, rses, needed, reason)
