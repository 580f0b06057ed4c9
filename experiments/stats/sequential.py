"""Always-valid inference for daily looks: asymptotic confidence sequences.

Method: the asymptotic confidence sequence (CS) of Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas (2023),
"Time-uniform central limit theory and asymptotic confidence sequences", Annals of Statistics
(arXiv:2103.06476), built on the Robbins normal-mixture boundary. With N units in total (both arms),
an estimate with standard error se (Welch / delta method, as in `frequentist`) and per-unit variance
s^2 = se^2 * N, the (1 - alpha) interval at every look is

    lift +- s * sqrt( 2 (N rho^2 + 1) / (N^2 rho^2) * log( sqrt(N rho^2 + 1) / alpha ) )

and holds simultaneously over all N with probability >= 1 - alpha (asymptotically), so it may be checked
after every day, or every event, without inflating the error rate. Inverting it gives the always-valid
p-value, in closed form with z = lift / se:

    p = min(1, sqrt(N rho^2 + 1) * exp( -z^2 N rho^2 / (2 (N rho^2 + 1)) ))

p < alpha exactly when the interval excludes 0.

Relative lift: as in `frequentist`, the p-value is that of the absolute difference (same null hypothesis;
the delta-method z of t/c - 1 rejected A/A experiments up to 5 times too often on skewed or sparse metrics), and
the interval is Fieller's with the sequence's boundary as the critical value k = half-width / se. For each
ratio R, t - R c is a difference of independent means with its own asymptotic confidence sequence of
half-width k sqrt(Var(t) + R^2 Var(c)) (k depends only on N, alpha and tuning), so the set of R it does not
exclude is a confidence sequence for mu_t / mu_c, and at R = 1 it is the absolute test: the relative
interval excludes 0 exactly when p < alpha.

Tuning parameter: rho is chosen so the interval is tightest at N = `tuning` total units (eq. 161 of the
arXiv v7 paper):  rho^2 = (-2 log alpha + log(-2 log alpha + 1)) / tuning.  Set `tuning` near the planned
total sample size; the default, 5,000 units, follows GrowthBook. A wrong guess costs width, never validity.

The price of validity under peeking is width: at the tuning point the interval is roughly 1.5-2 times as
wide as the fixed-horizon one. p-values from successive looks may be combined by their running minimum.
"""

from __future__ import annotations

import math

from experiments.stats.frequentist import check_pair, lift_result
from experiments.stats.results import LiftResult, never_raises
from experiments.stats.statistics import Statistic

DEFAULT_TUNING = 5_000
METHOD = "sequential_cs"


def rho_squared(alpha: float, tuning: float) -> float:
    """The mixture variance that makes the alpha-level interval tightest at `tuning` total units."""
    if tuning <= 0:
        raise ValueError(f"tuning must be a positive number of units, got {tuning!r}")
    log_term = -2.0 * math.log(alpha)
    return (log_term + math.log(log_term + 1.0)) / tuning


def boundary(total_units: float, alpha: float, tuning: float = DEFAULT_TUNING) -> float:
    """The sequence's critical value at N total units: half-width / standard error."""
    a = total_units * rho_squared(alpha, tuning)
    # log(sqrt(a + 1) / alpha) in pieces, so a huge N does not overflow a square root's argument
    return math.sqrt(2.0 * (a + 1.0) / a * (0.5 * math.log1p(a) - math.log(alpha)))


def half_width(standard_error: float, total_units: int, alpha: float, tuning: float = DEFAULT_TUNING) -> float:
    """Half-width of the confidence sequence for an estimate with this standard error at N total units."""
    return standard_error * boundary(total_units, alpha, tuning)


def always_valid_p_value(z: float, total_units: int, alpha: float, tuning: float = DEFAULT_TUNING) -> float:
    """The smallest level at which the confidence sequence (tuned for `alpha`) excludes 0."""
    a = total_units * rho_squared(alpha, tuning)
    log_p = 0.5 * math.log1p(a) - z * z * a / (2.0 * (a + 1.0))
    return 1.0 if log_p >= 0 else math.exp(log_p)


@never_raises(METHOD)
def sequential_test(control: Statistic, treatment: Statistic, *, relative: bool = False, alpha: float = 0.05,
                    tuning: float = DEFAULT_TUNING) -> LiftResult:
    """Always-valid interval and p-value for the absolute or relative lift at the current look."""
    failed = check_pair(METHOD, control, treatment, relative, alpha)
    if failed:
        return failed
    total = control.n + treatment.n
    return lift_result(METHOD, control, treatment, relative, alpha, critical=boundary(total, alpha, tuning),
                       p_value_of=lambda z: always_valid_p_value(z, total, alpha, tuning))
