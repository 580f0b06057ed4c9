"""Interleaving analysis: credit clicks to teams, score each unit, test the preference with a confidence sequence.

An interleaved impression shows one merged list; per position it records the arm whose pick it was (the team,
gateway/interleaving.py). When the report is built, never at serving time, every click is credited to the
team of its position. The randomisation unit (the user), not the impression, is what is independent, so:

    per impression   c_cand, c_ctrl = credited clicks of the candidate and of the control team
    per unit         score = mean over the unit's impressions with a credited click of (c_cand - c_ctrl)
                     (impressions without a credited click say nothing about preference; a tie counts 0)
    the test         mean of the unit scores against 0, with the same always-valid confidence sequence as the
                     A/B tests (experiments/stats/sequential.py), or a fixed-horizon t interval

plus win / loss / tie counts of units (score > 0, < 0, = 0). The team-balance check plays the role of SRM:
each arm's share of first positions and of all shown positions must match 1/m (chi-square, p < 0.001 alerts);
an imbalance means the merge or the logging favours an arm, and the verdict is withheld.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from scipy import stats as scipy_stats

from experiments.stats import srm_check
from experiments.stats.sequential import DEFAULT_TUNING, always_valid_p_value, half_width


def credit(teams: Sequence[int], clicked_positions: Iterable[int], arms: int) -> list[int]:
    """Clicks per team: a click at 1-based position p goes to teams[p - 1]; positions not shown are ignored."""
    out = [0] * arms
    for position in set(clicked_positions):
        if 1 <= position <= len(teams):
            out[teams[position - 1]] += 1
    return out


@dataclass
class UnitScores:
    """Running per-unit preference sums (candidate vs control), built from credited impressions."""

    sums: dict
    counts: dict

    @classmethod
    def empty(cls) -> "UnitScores":
        return cls({}, {})

    def add(self, unit: str, candidate_clicks: int, control_clicks: int) -> None:
        if candidate_clicks == 0 and control_clicks == 0:
            return
        self.sums[unit] = self.sums.get(unit, 0.0) + (candidate_clicks - control_clicks)
        self.counts[unit] = self.counts.get(unit, 0) + 1

    def scores(self) -> list[float]:
        return [self.sums[u] / self.counts[u] for u in self.sums]


@dataclass(frozen=True)
class Preference:
    units: int                    # units with at least one credited click
    mean: float | None            # mean unit score: > 0 prefers the candidate
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    method: str
    wins: int
    losses: int
    ties: int
    reason: str | None = None

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.ci_low is not None and (self.ci_low > 0 or self.ci_high < 0)

    def to_dict(self) -> dict:
        return {**self.__dict__, "significant": self.significant}


def preference(scores: Sequence[float], *, alpha: float = 0.05, sequential: bool = True,
               tuning: float = DEFAULT_TUNING) -> Preference:
    """The mean unit score with its interval and p-value; never raises on data."""
    n = len(scores)
    wins, losses = sum(s > 0 for s in scores), sum(s < 0 for s in scores)
    ties = n - wins - losses
    method = "sequential_cs" if sequential else "t"
    if n < 2:
        return Preference(n, None, None, None, None, method, wins, losses, ties,
                          "fewer than 2 units with a credited click")
    mean = math.fsum(scores) / n
    var = math.fsum((s - mean) ** 2 for s in scores) / (n - 1)
    if not (math.isfinite(mean) and math.isfinite(var)):
        return Preference(n, None, None, None, None, method, wins, losses, ties, "the scores are not finite")
    if var == 0:
        p = 1.0 if mean == 0 else 0.0
        return Preference(n, mean, mean, mean, p, method, wins, losses, ties,
                          "every unit has the same score: no variance to test")
    se = math.sqrt(var / n)
    if sequential:
        half = half_width(se, n, alpha, tuning)
        p = always_valid_p_value(mean / se, n, alpha, tuning)
    else:
        half = float(scipy_stats.t.ppf(1 - alpha / 2, n - 1)) * se
        p = float(2 * scipy_stats.t.sf(abs(mean) / se, n - 1))
    return Preference(n, mean, mean - half, mean + half, min(1.0, p), method, wins, losses, ties)


def team_balance(first_picks: Sequence[int], positions: Sequence[int], arms: Sequence[str]) -> dict:
    """Chi-square of each arm's first picks and shown positions against 1/m each; `alert` withholds."""
    weights = {a: 1.0 for a in arms}
    first = srm_check({a: int(v) for a, v in zip(arms, first_picks)}, weights)
    shown = srm_check({a: int(v) for a, v in zip(arms, positions)}, weights)
    alert = bool(first.alert or shown.alert)
    return {"alert": alert, "first_picks": dict(zip(arms, map(int, first_picks))),
            "positions": dict(zip(arms, map(int, positions))),
            "first_picks_p_value": first.p_value, "positions_p_value": shown.p_value,
            "status": "alert" if alert else ("ok" if first.ok and shown.ok else "unavailable")}
