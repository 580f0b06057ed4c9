"""Non-inferiority of a guardrail: is the harm shown to stay under its margin?

A guardrail caps harm, the change of a metric in its bad direction (an increase for lower-is-better metrics,
a decrease otherwise). From a lift and its (1 - alpha) interval, two-sided and always-valid when it came from
the sequential test:

    harm  = sign * lift,   [harm_low, harm_upper] = sign * [ci_low, ci_high]   (sign = -1 if higher is better)
    pass          harm_upper <  margin    shown within the margin (one-sided test at alpha / 2: conservative)
    fail          harm_low   >  margin    shown beyond the margin
    inconclusive  otherwise               with the units it would need if the estimate stayed where it is

The null hypothesis is "harm >= margin": "pass" rejects it, so an arm that truly harms by the margin passes
with probability <= alpha / 2 at any look when the interval is a confidence sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class NonInferiority:
    status: str                  # pass | fail | inconclusive
    harm: float | None
    harm_low: float | None
    harm_upper: float | None
    units_needed: int | None     # total units for the upper bound to clear, at the current estimate


def units_needed(units: int, harm: float, upper: float, margin: float) -> int | None:
    """About how many units in total the upper bound needs to clear the margin if the estimate stays where it
    is (interval widths shrink like 1/sqrt(n)); None when it cannot clear at this estimate."""
    if harm >= margin or units <= 0:
        return None
    half = upper - harm
    return units if half <= 0 else int(math.ceil(units * (half / (margin - harm)) ** 2))


def classify(harm: float, harm_low: float, harm_upper: float, margin: float, units: int) -> NonInferiority:
    if harm_upper < margin:
        return NonInferiority("pass", harm, harm_low, harm_upper, None)
    if harm_low > margin:
        return NonInferiority("fail", harm, harm_low, harm_upper, None)
    return NonInferiority("inconclusive", harm, harm_low, harm_upper, units_needed(units, harm, harm_upper, margin))


def noninferiority(lift: float | None, ci_low: float | None, ci_high: float | None, margin: float, *,
                   higher_is_better: bool, units: int) -> NonInferiority:
    """The guardrail's status from a lift (relative or absolute, the margin's scale) and its interval."""
    if lift is None or ci_low is None or ci_high is None:
        return NonInferiority("inconclusive", None, None, None, None)
    sign = -1.0 if higher_is_better else 1.0
    low, high = sorted((sign * ci_low, sign * ci_high))
    return classify(sign * lift, low, high, margin, units)
