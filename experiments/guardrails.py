"""Guardrails: each a non-inferiority test of a metric's harm against its margin (docs/reports.md).

The harm is the change in the metric's bad direction (an increase for lower-is-better metrics, a decrease
otherwise), relative or absolute as the YAML says. Its interval comes from the comparison rows the report
already computed (always-valid when the design is sequential); latency_p95, a per-arm quantile without a
unit-level variance, gets a distribution-free interval from order statistics of each arm's latencies, with the
arm's units as n (conservative when a user searches many times). experiments/stats/noninferiority.py decides.
"""

from __future__ import annotations

import math
from statistics import NormalDist

from experiments.stats.noninferiority import classify, noninferiority
from experiments.stats.sequential import half_width

GUARDRAIL_P = 0.95          # the latency guardrail's quantile


def guardrails_policy(experiment) -> str:
    """block (default): ship only when every guardrail is shown within its margin; warn: report, never block."""
    return (getattr(experiment, "guardrails_policy", None)
            or getattr(experiment.metrics, "guardrails_policy", None) or "block")


def _quantile_at(grid: tuple, p: float) -> float | None:
    """Linear interpolation in an arm's (probability, latency) grid; None outside it."""
    for (p0, v0), (p1, v1) in zip(grid, grid[1:]):
        if p0 <= p <= p1:
            return v0 + (v1 - v0) * ((p - p0) / (p1 - p0) if p1 > p0 else 0.0)
    return None


def _latency_bounds(summary, settings, units: int) -> tuple[float, float] | None:
    """(low, high) bounds on an arm's p95 latency: the order statistics at p95 -+ h, where h is the
    always-valid (or fixed) half-width of a proportion at 0.95 over the arm's units, at level alpha / 2 (so
    both arms' bounds hold together at alpha)."""
    if not summary.latency_quantiles or units < 2:
        return None
    se = math.sqrt(GUARDRAIL_P * (1 - GUARDRAIL_P) / units)
    alpha = settings.alpha / 2
    if settings.sequential:
        h = half_width(se, units, alpha, max(settings.tuning / 2, 1.0))
    else:
        h = NormalDist().inv_cdf(1 - alpha / 2) * se
    low = _quantile_at(summary.latency_quantiles, GUARDRAIL_P - h)
    high = _quantile_at(summary.latency_quantiles, GUARDRAIL_P + h)
    return None if low is None or high is None else (low, high)


def _latency_guardrail(entry: dict, experiment, data, arm: str, relative: bool, settings) -> None:
    control, treated = data.arms.get(experiment.control), data.arms.get(arm)
    if control is None or treated is None or control.latency_p95 is None or treated.latency_p95 is None:
        entry["reason"] = "no latency data for the control or this arm yet"
        return
    c, t = control.latency_p95, treated.latency_p95
    cb, tb = _latency_bounds(control, settings, control.units), _latency_bounds(treated, settings, treated.units)
    if relative and c <= 0:
        entry["reason"] = "the control's p95 latency is 0 ms: a relative margin is undefined"
        return
    entry["harm"] = t / c - 1 if relative else t - c
    entry["method"] = "order-statistic interval on each arm's p95 (units as n)"
    if cb is None or tb is None or (relative and cb[0] <= 0):
        entry["reason"] = (f"p95 {c:.1f} ms -> {t:.1f} ms; too few units for an interval on the p95 yet")
        return
    if relative:
        entry["harm_low"], entry["harm_upper"] = tb[0] / cb[1] - 1, tb[1] / cb[0] - 1
    else:
        entry["harm_low"], entry["harm_upper"] = tb[0] - cb[1], tb[1] - cb[0]
    entry["reason"] = f"p95 {c:.1f} ms -> {t:.1f} ms"


NO_EVENTS_METHOD = "no event in either arm: exact bound 1 - (alpha/2)^(1/n) per arm, valid at any look"


def _no_events(entry: dict, data, control: str, arm: str, metric, relative: bool, settings) -> None:
    """A guardrail on a metric that neither arm has seen at all (no zero-result search, say: a dense index
    always answers) has zero variance, so the delta method gives no interval, and a guardrail that can never
    be shown safe would hold back every verdict. Counts are never negative, so each arm's mean is 0 or more,
    and an arm whose n units had no event has, with probability 1 - a, a share of units with any event below
    u = 1 - a^(1/n): under a share >= u every unit is event-free with probability <= 1 - u, so the product
    of 1{no event} / (1 - u) over units is a non-negative supermartingale and Ville's inequality makes the
    bound hold at every look, not only a planned one. That share bounds the metric (a ratio of counts per
    unit, each in [0, 1] of its denominator; or a mean of indicators) unless units with events search more
    than the rest; the method says so in the report."""
    stats = data.stats.get(metric.name, {})
    c, t = stats.get(control), stats.get(arm)
    if c is None or t is None or c.n < 1 or t.n < 1 or _events(c) != 0 or _events(t) != 0:
        return
    if relative:
        entry["reason"] = ("neither arm has any event of this metric, so its control rate is 0 and a relative "
                           "margin is undefined: give the guardrail max_absolute_increase instead")
        return
    alpha = settings.alpha / 2
    bound_c, bound_t = 1 - alpha ** (1 / c.n), 1 - alpha ** (1 / t.n)
    low, high = (-bound_t, bound_c) if metric.higher_is_better else (-bound_c, bound_t)
    entry.update(harm=0.0, harm_low=low, harm_upper=high, method=NO_EVENTS_METHOD,
                 reason=f"no event in either arm ({c.n:,} and {t.n:,} units): the treatment's rate is below "
                        f"{bound_t:.2%}")


def _events(stat) -> float:
    total = getattr(stat, "m_sum", None)
    return stat.sum if total is None else total


def evaluate_guardrails(experiment, data, rows: list[dict], settings) -> list[dict]:
    """One entry per guardrail x treatment arm: the non-inferiority of its harm against its margin."""
    out = []
    by_key = {(r["metric"], r["arm"]): r for r in rows}
    sequential = experiment.design.sequential
    for g in experiment.metrics.guardrails:
        relative = g.max_relative_increase is not None
        limit = g.max_relative_increase if relative else g.max_absolute_increase
        for arm in (a.name for a in experiment.arms if a.name != experiment.control):
            entry = {"metric": g.metric, "arm": arm, "limit": limit, "scale": "relative" if relative else "absolute",
                     "harm": None, "harm_low": None, "harm_upper": None, "status": "inconclusive",
                     "units": sum(data.arms[a].units for a in (experiment.control, arm) if a in data.arms),
                     "units_needed": None, "method": None, "reason": None}
            metric = data.metrics.get(g.metric)
            if metric is None:  # validation refuses unknown names; a report on an old file still must not pass it
                entry["reason"] = f"unknown metric {g.metric!r}: it cannot be shown safe"
            elif metric.kind == "quantile":
                _latency_guardrail(entry, experiment, data, arm, relative, settings)
            else:
                row = by_key.get((g.metric, arm))
                key = "relative" if relative else "absolute"
                result = row and ((row[f"{key}_sequential"] if sequential else None) or row[key])
                if not result or result.get("lift") is None or result.get("ci_low") is None:
                    entry["reason"] = (row or {}).get("reason") or "no estimate yet"
                    _no_events(entry, data, experiment.control, arm, metric, relative, settings)
                else:
                    ni = noninferiority(result["lift"], result["ci_low"], result["ci_high"], limit,
                                        higher_is_better=metric.higher_is_better, units=entry["units"])
                    entry.update(harm=ni.harm, harm_low=ni.harm_low, harm_upper=ni.harm_upper,
                                 method=result.get("method"))
            if entry["harm_upper"] is not None:
                ni = classify(entry["harm"], entry["harm_low"], entry["harm_upper"], limit, entry["units"])
                entry.update(status=ni.status, units_needed=ni.units_needed)
                if entry["method"] == NO_EVENTS_METHOD and ni.status == "inconclusive" and 0 < limit < 1:
                    entry["units_needed"] = 2 * math.ceil(math.log(settings.alpha / 2) / math.log1p(-limit))
            out.append(entry)
    return out
