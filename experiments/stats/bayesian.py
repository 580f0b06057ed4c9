"""Bayesian probability to beat control (optional view beside the frequentist verdict).

With a flat prior and the normal approximation already used by the tests, the posterior of the lift is
N(lift, se^2), so P(treatment beats control) = Phi(lift / se) and the (1 - alpha) credible interval equals
the fixed-horizon z interval. It answers "how likely is B better", not "how sure we are it is not noise
after many looks": it is not protected against peeking.
"""

from __future__ import annotations

import math

from scipy import special

from experiments.stats.frequentist import check_pair, lift_and_variance
from experiments.stats.results import BayesianResult, finite_or_none
from experiments.stats.statistics import Statistic


def probability_to_beat_control(control: Statistic, treatment: Statistic, *, relative: bool = False,
                                higher_is_better: bool = True, credible: float = 0.95) -> BayesianResult:
    failed = check_pair("bayesian", control, treatment, relative, 1 - credible)
    if failed:
        return BayesianResult(relative=relative, error=failed.error, reason=failed.reason)
    lift, variance = lift_and_variance(control, treatment, relative)
    se = math.sqrt(variance)
    z = lift / se if higher_is_better else -lift / se
    half = -special.ndtri((1 - credible) / 2) * se
    return BayesianResult(
        relative=relative, lift=finite_or_none(lift), standard_error=finite_or_none(se),
        probability_to_beat_control=finite_or_none(special.ndtr(z)),
        credible_low=finite_or_none(lift - half), credible_high=finite_or_none(lift + half),
    )
