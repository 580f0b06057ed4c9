"""Planning: how many units an experiment's design needs, for a fixed-horizon and for the sequential test.

`plan(design, baseline_mean, baseline_sd, arms)` is pure: the command (`abgate experiments plan`) feeds it
from flags, and the gateway may feed it the pre-period mean and SD of the primary metric from the event log.

The design's `mde` is relative: a change of mde x the control's mean of the primary metric (0.02 = 2 %).
Two scales:
- a rate (`baseline_sd` None): each unit is 0 or 1 with probability p = baseline_mean; the variances are
  p(1-p) in control and p'(1-p') at the treated rate p' = p (1 + mde) (experiments/stats/power.py);
- a mean: per-unit SD `baseline_sd`, the same in every arm.

Fixed horizon: experiments/stats/power.py (two-sided normal test with both tails, like statsmodels'
NormalIndPower), one look at the end.

Sequential: the asymptotic confidence sequence of experiments/stats/sequential.py, with the tuning the report
will use (design.sample_size x arms when the design gives it, else 5,000 total units). Its half-width at N
total units of a control/treatment pair is w(N) = half_width(se, N, alpha, tuning), se the standard error of the
difference; the sequence rejects when |estimate| > w, so at the planned final look

    power(n) = Phi((delta - w) / se) + Phi((-delta - w) / se)

and n is the smallest per-arm count with power(n) >= design.power, found by doubling then bisection on
integers. w / se grows like sqrt(log N) and delta / se like sqrt(N), so power rises with n wherever it is
above a few percent, which bisection needs. This counts only the last look: stopping early at a daily look can
only add rejections, so the real power with peeking is at least this (the figure is conservative).
`sequential_self_tuned` is the same with the interval tuned at the planned size itself: write its per-arm
count as `design.sample_size` and the report tunes there, which needs fewer units than the default tuning.

With unequal weights every treatment is compared with the control: the control's count is the largest any
comparison needs, and each arm gets its share of it. Counts are enrolled units (the design's randomisation
unit); divide by `allocation` for the units that must reach the layer.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from scipy import optimize, special

from experiments.stats.power import mde_mean, mde_proportion, sample_size_mean, sample_size_proportion
from experiments.stats.sequential import DEFAULT_TUNING, half_width

MAX_UNITS = 10**12  # past this the MDE is not reachable in practice; say so instead of searching forever


def _shares(arms: int | Sequence[Any]) -> list[float]:
    """Weights with the control first, from a count (equal split), numbers, or objects with .weight."""
    if isinstance(arms, int) and not isinstance(arms, bool):
        if arms < 2:
            raise ValueError("an experiment needs at least two arms")
        return [1.0] * arms
    weights = [float(getattr(a, "weight", a)) for a in arms]
    if len(weights) < 2 or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ValueError("arms must be at least two positive weights, the control first")
    return weights


def design_tuning(design: Any, arms: int) -> float:
    """The tuning experiments/report.py gives the confidence sequence: the planned total, or the default."""
    return design.sample_size * arms if design.sample_size else DEFAULT_TUNING


class _Scale:
    """Per-unit variances in control and treatment for an absolute difference delta."""

    def __init__(self, baseline_mean: float, baseline_sd: float | None, mde: float | None) -> None:
        self.rate = baseline_sd is None
        self.mean = float(baseline_mean)
        if self.rate:
            if not 0 < self.mean < 1:
                raise ValueError(f"the baseline rate must be strictly between 0 and 1, got {baseline_mean!r}")
            self.sd = math.sqrt(self.mean * (1 - self.mean))
        else:
            if not (math.isfinite(baseline_sd) and baseline_sd > 0):
                raise ValueError(f"the baseline SD must be a positive number, got {baseline_sd!r}")
            if not math.isfinite(self.mean) or self.mean == 0:
                raise ValueError("the baseline mean must be non-zero: the MDE is relative to it")
            self.sd = float(baseline_sd)
        if mde is not None and self.rate and not 0 < self.mean * (1 + mde) < 1:
            raise ValueError(f"a {mde:.4g} relative change moves the rate {self.mean:g} out of (0, 1): lower the "
                             "design's mde")

    def variances(self, delta: float) -> tuple[float, float]:
        if self.rate:
            treated = self.mean + delta
            return self.mean * (1 - self.mean), treated * (1 - treated)
        return self.sd**2, self.sd**2


def _sequential_power(scale: _Scale, delta: float, n_control: float, ratio: float, alpha: float,
                      tuning: float) -> float:
    var_c, var_t = scale.variances(delta)
    se = math.sqrt(var_c / n_control + var_t / (ratio * n_control))
    width = half_width(se, n_control * (1 + ratio), alpha, tuning)
    return float(special.ndtr((abs(delta) - width) / se) + special.ndtr((-abs(delta) - width) / se))


def _smallest_n(reaches) -> int:
    """The smallest integer n >= 2 with reaches(n) true, for a predicate false below some n and true above."""
    low, high = 1, 2
    while not reaches(high):
        low, high = high, high * 2
        if high > MAX_UNITS:
            raise ValueError("the MDE needs more than 10^12 units per arm: raise the mde or lower the power")
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if reaches(mid) else (mid, high)
    return high


def _arm_counts(n_control: int, shares: list[float]) -> tuple[list[int], int]:
    per_arm = [n_control] + [math.ceil(n_control * w / shares[0] - 1e-9) for w in shares[1:]]
    return per_arm, sum(per_arm)


def plan(design: Any, baseline_mean: float, baseline_sd: float | None, arms: int | Sequence[Any]) -> dict:
    """Units per arm and in total for the design (an experiments.schema.Design: alpha, power, mde, sample_size).

    baseline_mean: the primary metric's mean in control (a rate when baseline_sd is None); arms: how many
    (equal split) or their weights, control first. With design.mde it returns the units needed; without it
    (a design that only gives sample_size) the relative MDE that sample size can detect. Raises ValueError
    with a sentence saying what to change when the inputs make no plan."""
    shares = _shares(arms)
    alpha, target, mde = float(design.alpha), float(design.power), design.mde
    scale = _Scale(baseline_mean, baseline_sd, mde)
    ratios = [w / shares[0] for w in shares[1:]]
    tuning = design_tuning(design, len(shares))
    out: dict = {
        "alpha": alpha, "power": target, "arms": len(shares),
        "shares": [round(w / sum(shares), 6) for w in shares],
        "baseline": {"scale": "rate" if scale.rate else "mean", "mean": scale.mean, "sd": scale.sd},
        "sequential_tuning": tuning,
        "note": "mde is relative to the control's mean of the primary metric; counts are enrolled units; "
                "sequential power is that of the last look (a lower bound with daily looks)",
    }
    if mde is None:
        if not design.sample_size:
            raise ValueError("the design has neither mde nor sample_size: add design.mde (relative, e.g. 0.02)")
        return out | {"sample_size_per_arm": design.sample_size,
                      "detectable_mde": _detectable(scale, design.sample_size, min(ratios), alpha, target, tuning)}
    delta = mde * scale.mean
    out["mde"] = {"relative": mde, "absolute": delta}
    if scale.rate:
        n_fixed = max(sample_size_proportion(scale.mean, mde, relative=True, alpha=alpha,
                                                   power_target=target, ratio=r) for r in ratios)
    else:
        n_fixed = max(sample_size_mean(delta, scale.sd, alpha=alpha, power_target=target, ratio=r)
                      for r in ratios)

    def sequential_n(tune) -> int:
        return max(_smallest_n(lambda n: _sequential_power(scale, delta, n, r, alpha, tune(n)) >= target)
                   for r in ratios)

    n_seq = sequential_n(lambda n: tuning)
    n_self = sequential_n(lambda n: n * len(shares))
    for key, n in (("fixed_horizon", n_fixed), ("sequential", n_seq), ("sequential_self_tuned", n_self)):
        per_arm, total = _arm_counts(n, shares)
        out[key] = {"per_arm": per_arm, "total": total}
    out["sequential"]["vs_fixed"] = round(out["sequential"]["total"] / out["fixed_horizon"]["total"], 4)
    out["sequential_self_tuned"]["tuning"] = n_self * len(shares)
    return out


def _detectable(scale: _Scale, n: int, ratio: float, alpha: float, target: float, tuning: float) -> dict:
    """Relative MDEs reachable with n control units: fixed horizon (power.py) and sequential (bisection)."""
    if scale.rate:
        fixed_mde = mde_proportion(scale.mean, n, relative=True, alpha=alpha, power_target=target,
                                         ratio=ratio)
        ceiling = (1 - scale.mean) * (1 - 1e-9)
    else:
        fixed_mde = mde_mean(scale.sd, n, alpha=alpha, power_target=target, ratio=ratio) / abs(scale.mean)
        ceiling = 1e3 * scale.sd
    gap = lambda d: _sequential_power(scale, d, n, ratio, alpha, tuning) - target  # noqa: E731
    sequential_mde = (optimize.brentq(gap, 1e-15, ceiling, xtol=1e-14, rtol=1e-12) / abs(scale.mean)
                      if gap(ceiling) >= 0 else None)
    return {"fixed_horizon": fixed_mde, "sequential": sequential_mde}
