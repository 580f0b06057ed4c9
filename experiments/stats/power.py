"""Power, sample size and minimum detectable effect for the two-sided fixed-horizon test.

Normal approximation with unequal variances allowed:

    se      = sqrt(var_c / n_c + var_t / n_t)
    power   = Phi(|delta| / se - z_{1-alpha/2}) + Phi(-|delta| / se - z_{1-alpha/2})

Both tails are kept, so results agree with statsmodels NormalIndPower; sample size and MDE solve this
equation exactly (Brent's method) rather than using the one-tail shortcut. For proportions the variances
are p(1-p) at the control rate and at the treated rate. Sample sizes are per arm for a 50/50 split unless
`ratio` (n_t / n_c) says otherwise. These figures are for one look at the end; the sequential test needs
more units for the same power (see docs/statistics.md).
"""

from __future__ import annotations

import math

from scipy import optimize, special


def _validate(alpha: float, target: float | None = None) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    if target is not None and not alpha < target < 1:
        raise ValueError(f"power must be in (alpha, 1), got {target!r}")


def power(effect: float, variance_control: float, n_control: float, *, variance_treatment: float | None = None,
          n_treatment: float | None = None, alpha: float = 0.05) -> float:
    """Probability that the two-sided test at level alpha rejects when the true lift is `effect`."""
    _validate(alpha)
    var_t = variance_control if variance_treatment is None else variance_treatment
    n_t = n_control if n_treatment is None else n_treatment
    se = math.sqrt(variance_control / n_control + var_t / n_t)
    if se <= 0:
        raise ValueError("the variance is zero, so power is undefined")
    z = -special.ndtri(alpha / 2)
    shift = abs(effect) / se
    return float(special.ndtr(shift - z) + special.ndtr(-shift - z))


def _n_for_power(variance_control: float, variance_treatment: float, effect: float, alpha: float,
                 target: float, ratio: float) -> float:
    """Continuous n_control with power(n) == target; power grows with n, so bracket and solve."""
    def gap(n: float) -> float:
        return power(effect, variance_control, n, variance_treatment=variance_treatment, n_treatment=ratio * n,
                     alpha=alpha) - target
    high = 2.0
    while gap(high) < 0:
        high *= 2.0
    return optimize.brentq(gap, 1e-9, high, xtol=1e-10, rtol=1e-14)


def sample_size_mean(mde: float, sd: float, *, alpha: float = 0.05, power_target: float = 0.8,
                     ratio: float = 1.0) -> int:
    """Units in the control arm (treatment gets ratio x that) to detect an absolute difference `mde`."""
    _validate(alpha, power_target)
    if mde == 0 or sd <= 0:
        raise ValueError("mde must be non-zero and sd positive")
    return math.ceil(_n_for_power(sd**2, sd**2, mde, alpha, power_target, ratio) - 1e-9)


def sample_size_proportion(baseline: float, mde: float, *, relative: bool = False, alpha: float = 0.05,
                           power_target: float = 0.8, ratio: float = 1.0) -> int:
    """Units in the control arm to move a rate from `baseline` by `mde` (absolute, or relative if asked)."""
    _validate(alpha, power_target)
    delta = baseline * mde if relative else mde
    treated = baseline + delta
    if not (0 < baseline < 1 and 0 < treated < 1) or delta == 0:
        raise ValueError("baseline and baseline + mde must lie strictly between 0 and 1, and mde be non-zero")
    n = _n_for_power(baseline * (1 - baseline), treated * (1 - treated), delta, alpha, power_target, ratio)
    return math.ceil(n - 1e-9)


def mde_mean(sd: float, n_control: float, *, alpha: float = 0.05, power_target: float = 0.8,
             ratio: float = 1.0) -> float:
    """Smallest absolute difference detected with the target power at this sample size."""
    _validate(alpha, power_target)
    se = sd * math.sqrt(1 / n_control + 1 / (ratio * n_control))
    return optimize.brentq(lambda d: power(d, sd**2, n_control, n_treatment=ratio * n_control, alpha=alpha)
                           - power_target, 0.0, 20 * se, xtol=1e-14 * max(se, 1e-300), rtol=1e-14)


def mde_proportion(baseline: float, n_control: float, *, relative: bool = False, alpha: float = 0.05,
                   power_target: float = 0.8, ratio: float = 1.0) -> float:
    """Smallest upward move of a rate detected with the target power (absolute, or relative to baseline)."""
    _validate(alpha, power_target)
    if not 0 < baseline < 1:
        raise ValueError("baseline must lie strictly between 0 and 1")

    def gap(delta: float) -> float:
        treated = baseline + delta
        return power(delta, baseline * (1 - baseline), n_control, variance_treatment=treated * (1 - treated),
                     n_treatment=ratio * n_control, alpha=alpha) - power_target

    ceiling = 1 - baseline - 1e-12
    if gap(ceiling) < 0:
        raise ValueError("no effect within the rate's range reaches that power at this sample size")
    delta = optimize.brentq(gap, 1e-15, ceiling, xtol=1e-15, rtol=1e-14)
    return delta / baseline if relative else delta


def achieved_mde(standard_error: float, *, alpha: float = 0.05, power_target: float = 0.8) -> float:
    """MDE implied by a measured standard error (one-tail approximation, for reports: 'we could see X')."""
    _validate(alpha, power_target)
    return float((-special.ndtri(alpha / 2) + special.ndtri(power_target)) * standard_error)
