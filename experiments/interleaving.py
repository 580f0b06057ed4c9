"""Interleaving analysis: credit clicks to teams, score each unit, test the preference with a confidence sequence.

An interleaved impression shows one merged list; per position it records the arm whose pick it was (the team,
gateway/interleaving.py), and beside it every arm's own ranking. When the report is built, never at serving
time, every click is credited to the team of its position, except clicks in the arms' common prefix:

    common prefix    the top L positions where every arm's own ranking has the same documents in the same
                     order. Team-draft shows exactly those L documents first, whichever arm picks them, and
                     assigns each to a team by the coin flip alone, so a click there says nothing about which
                     ranking is better: it is ignored (Chapelle, Joachims, Radlinski & Yue 2012, "Large-scale
                     validation and analysis of interleaved search evaluation", ACM TOIS 30(1), section on
                     team-draft). With three or more arms (multileaving) the prefix is the one all arms share.
                     Ignoring these clicks removes pure noise and cannot favour either arm: their credit is a
                     fair coin whatever the rankings are.

The randomisation unit (the user), not the impression, is what is independent, so:

    per impression   c_cand, c_ctrl = credited clicks of the candidate and of the control team;
                     credited when c_cand + c_ctrl > 0, and then its outcome is
                     +1 (candidate wins), -1 (control wins) or 0 (tie): sign(c_cand - c_ctrl), the per-query
                     outcome of team-draft interleaving (Radlinski, Kurup & Joachims 2008; Chapelle et al. 2012)
    per unit         s_u = sum of its outcomes, n_u = its credited impressions
    the estimate     R = sum s_u / sum n_u: wins minus losses per credited search, pooled over units
                     (Chapelle et al.'s Delta = (wins + ties/2) / credited - 1/2 is R / 2), in [-1, 1]
    the test         R's standard error by the delta method over units, as for the A/B tests' ratio metrics
                     (units with more searches weigh more, and the unit stays the independent observation);
                     R against 0 with the same always-valid confidence sequence as the A/B tests
                     (experiments/stats/sequential.py), or a fixed-horizon t interval

plus win / loss / tie counts of units (s_u > 0, < 0, = 0). The team-balance check plays the role of SRM:
each arm's share of first positions and of all shown positions must match 1/m (chi-square, p < 0.001 alerts);
an imbalance means the merge or the logging favours an arm, and the verdict is withheld.

The volume study (gateway/simulation/volume.py) scores simulated experiments with these same functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from scipy import stats as scipy_stats

from experiments.stats import srm_check
from experiments.stats.sequential import DEFAULT_TUNING, always_valid_p_value, half_width

NO_TEAM = -1   # a position whose clicks are credited to no arm (it lies in the arms' common prefix)


def common_prefix(rankings: Sequence[Sequence[str]]) -> int:
    """How many top positions every ranking shares, document for document (0 with fewer than two rankings)."""
    if len(rankings) < 2:
        return 0
    length = 0
    for docs in zip(*rankings):
        if any(doc != docs[0] for doc in docs[1:]):
            break
        length += 1
    return length


def credited_teams(teams: Sequence[int], rankings: Sequence[Sequence[str]] = ()) -> tuple[int, ...]:
    """Per shown position, the team a click there is credited to: its team, or NO_TEAM within the common prefix
    of `rankings` (team-draft shows that prefix first, so its positions are the list's first ones)."""
    skip = common_prefix(rankings)
    return tuple(NO_TEAM if position < skip else int(team) for position, team in enumerate(teams))


def credit(teams: Sequence[int], clicked_positions: Iterable[int], arms: int,
           rankings: Sequence[Sequence[str]] = ()) -> list[int]:
    """Clicks per team: a click at 1-based position p goes to teams[p - 1], unless p lies in the common prefix
    of the arms' own `rankings` (then to no team); positions not shown are ignored, a repeated click counts once."""
    credited = credited_teams(teams, rankings)
    out = [0] * arms
    for position in set(clicked_positions):
        if 1 <= position <= len(credited) and credited[position - 1] != NO_TEAM:
            out[credited[position - 1]] += 1
    return out


def outcome(candidate_clicks, control_clicks):
    """+1 when the candidate's team got more credited clicks, -1 when the control's did, 0 for a tie (numbers or
    numpy arrays alike)."""
    return (candidate_clicks > control_clicks) * 1 - (candidate_clicks < control_clicks) * 1


@dataclass
class UnitScores:
    """Running per-unit sums of impression outcomes (candidate vs control) and counts of credited impressions."""

    sums: dict
    counts: dict

    @classmethod
    def empty(cls) -> "UnitScores":
        return cls({}, {})

    def add(self, unit: str, candidate_clicks: int, control_clicks: int) -> None:
        if candidate_clicks == 0 and control_clicks == 0:
            return  # no credited click: the impression says nothing about preference
        self.sums[unit] = self.sums.get(unit, 0.0) + outcome(candidate_clicks, control_clicks)
        self.counts[unit] = self.counts.get(unit, 0) + 1

    def units(self) -> tuple[list[float], list[int]]:
        """(s_u, n_u) of every unit with a credited impression, in one order."""
        return [self.sums[u] for u in self.sums], [self.counts[u] for u in self.sums]

    def scores(self) -> list[float]:
        """Each unit's mean outcome over its credited impressions."""
        return [self.sums[u] / self.counts[u] for u in self.sums]


@dataclass(frozen=True)
class Preference:
    units: int                    # units with at least one credited click
    mean: float | None            # R: > 0 prefers the candidate
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


def preference(sums: Sequence[float], counts: Sequence[float] | None = None, *, alpha: float = 0.05,
               sequential: bool = True, tuning: float = DEFAULT_TUNING) -> Preference:
    """R = sum(sums) / sum(counts) over units, with its interval and p-value; never raises on data.

    `sums[u]`, `counts[u]`: unit u's summed outcomes and its credited impressions (UnitScores.units()); without
    `counts`, each unit counts 1 and this is the one-sample test of the mean of `sums`."""
    sums = sums.tolist() if hasattr(sums, "tolist") else list(sums)      # numpy arrays too (volume study)
    n = len(sums)
    weights = [1.0] * n if counts is None else [float(c) for c in counts]
    if len(weights) != n:
        raise ValueError(f"{n} unit sums but {len(weights)} counts")
    wins, losses = sum(s > 0 for s in sums), sum(s < 0 for s in sums)
    ties = n - wins - losses
    method = "sequential_cs" if sequential else "t"
    if n < 2:
        return Preference(n, None, None, None, None, method, wins, losses, ties,
                          "fewer than 2 units with a credited click")
    total = math.fsum(weights)
    if not (math.isfinite(total) and total > 0):
        return Preference(n, None, None, None, None, method, wins, losses, ties, "the counts are not positive")
    mean = math.fsum(sums) / total
    # Delta method for a ratio of unit sums: Var(R) ~ sum (s_u - R n_u)^2 / (N (N - 1) nbar^2).
    var = math.fsum((s - mean * w) ** 2 for s, w in zip(sums, weights)) / (n - 1) / (total / n) ** 2
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
