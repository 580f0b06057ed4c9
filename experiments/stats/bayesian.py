"""Bayesian probability to beat control (optional view beside the frequentist verdict).

With a flat prior and the normal approximation already used by the tests, the posterior of t - c is
N(t - c, Var(t) + Var(c)), so P(treatment beats control) = Phi((t - c) / se) whichever scale the lift is
shown on (for a relative lift the direction comes from t - c, so a negative control mean does not flip it).
The (1 - alpha) credible interval equals the fixed-horizon z interval (Fieller's for a relative lift, see
`frequentist`). It answers "how likely is B better", not "how sure we are it is not noise after many
looks": it is not protected against peeking.
"""

from __future__ import annotations

import math

from scipy import special

from experiments.stats.frequentist import check_pair, z_test
from experiments.stats.results import OUT_OF_RANGE, BayesianResult, ErrorCode, finite_or_none
from experiments.stats.statistics import Statistic


def probability_to_beat_control(control: Statistic, treatment: Statistic, *, relative: bool = False,
                                higher_is_better: bool = True, credible: float = 0.95) -> BayesianResult:
    try:
        failed = check_pair("bayesian", control, treatment, relative, 1 - credible)
        if failed:
            return BayesianResult(relative=relative, error=failed.error, reason=failed.reason)
        interval = z_test(control, treatment, relative=relative, alpha=1 - credible)
        if not interval.ok:
            return BayesianResult(relative=relative, error=interval.error, reason=interval.reason)
        z = (treatment.estimate - control.estimate) / math.sqrt(control.estimate_variance
                                                                 + treatment.estimate_variance)
        probability = finite_or_none(special.ndtr(z if higher_is_better else -z))
    except ArithmeticError:     # extreme but finite sums: the engine never raises on data
        return BayesianResult(relative=relative, error=ErrorCode.INVALID_STATISTIC, reason=OUT_OF_RANGE)
    return BayesianResult(
        relative=relative, lift=interval.lift, standard_error=interval.standard_error,
        probability_to_beat_control=probability, credible_low=interval.ci_low, credible_high=interval.ci_high,
    )
