"""How much traffic does the online test need? The click model replayed many times over two arms' rankings.

Each arm's top-10 per test query comes from `abgate eval-offline --output` (the `per_query[q].top` lists: the
very rankings the gateway serves, since it runs the same encoder and index). For each volume (users in the
experiment, split 50/50 by a seeded draw as the hash would) and each replication, simulated users with the same
population and click model as `abgate simulate` search and click; per-user sums of the metric (clicks for CTR,
searches with a click for click_share, the reciprocal rank of the first click for MRR) over searches give the
ratio statistic, tested with the stats engine's sequential test (the demo experiments' design) and the
fixed-horizon z-test. The share of replications that name the offline winner is the power at that volume; run
with both arms on the same rankings it is the A/A false-positive rate.

Vectorised with numpy: a replication of 10,000 users takes milliseconds, so hundreds of replications per volume
run in seconds, which is why this, not the HTTP path, is where the volume is searched for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from experiments.interleaving import NO_TEAM, credited_teams, outcome, preference
from experiments.stats import RatioStatistic, sequential_test, z_test
from gateway.interleaving import interleave
from gateway.simulation.users import ClickModel, Judgments, Population


@dataclass(frozen=True)
class VolumePoint:
    users: int                     # in the experiment, both arms
    reps: int
    power_sequential: float        # share of reps where the sequential test names `expected` the winner
    power_fixed: float             # same for the fixed-horizon z-test (valid only if looked at once)
    wrong_sequential: float        # share naming the other arm
    mean_lift: float               # relative lift of the metric, treatment vs control

    def as_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def click_matrix(rankings: Mapping[str, Sequence[str]], judgments: Judgments, model: ClickModel,
                 k: int = 10) -> np.ndarray:
    """(queries x k) click probabilities of one arm, queries in `judgments.query_ids` order."""
    out = np.zeros((len(judgments.query_ids), k))
    for row, query_id in enumerate(judgments.query_ids):
        ranked = list(rankings.get(query_id, []))[:k]
        out[row, :len(ranked)] = model.click_probabilities(ranked, judgments.qrels[query_id])
    return out


METRICS = ("ctr", "click_share", "mrr")   # per-search numerators, as experiments/metrics.py defines them


def _per_search(clicked: np.ndarray, metric: str) -> np.ndarray:
    """One number per search from its (searches x k) clicks: clicks (ctr), any click (click_share), or the
    reciprocal rank of the best-ranked click, 0 without one (mrr)."""
    if metric == "ctr":
        return clicked.sum(axis=1)
    if metric == "click_share":
        return clicked.any(axis=1).astype(float)
    if metric == "mrr":
        first = clicked.argmax(axis=1)
        return np.where(clicked.any(axis=1), 1.0 / (first + 1), 0.0)
    raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def _replicate(probs: tuple[np.ndarray, np.ndarray], users: int, population: Population, model: ClickModel,
               rng: np.random.Generator, metric: str = "ctr") -> tuple[RatioStatistic, RatioStatistic]:
    visits = 1 + rng.poisson(max(population.mean_visits - 1, 0), users)
    searches = np.zeros(users, dtype=int)
    for v in range(int(visits.max())):  # searches per visit: 1 + Poisson, only for users still visiting
        searches += np.where(visits > v, 1 + rng.poisson(max(population.mean_searches - 1, 0), users), 0)
    searches = np.minimum(searches, population.max_searches_per_user)
    propensity = np.exp(model.propensity_sigma * rng.standard_normal(users) - model.propensity_sigma ** 2 / 2)
    arm = rng.random(users) < 0.5                   # True: treatment
    owner = np.repeat(np.arange(users), searches)   # the user of each search
    queries = rng.integers(0, probs[0].shape[0], owner.size)
    p = np.where(arm[owner, None], probs[1][queries], probs[0][queries]) * propensity[owner, None]
    per_search = _per_search(rng.random(p.shape) < np.clip(p, 0, 1), metric)
    clicks = np.bincount(owner, weights=per_search, minlength=users)
    stats = []
    for mask in (~arm, arm):
        c, s = clicks[mask], searches[mask].astype(float)
        stats.append(RatioStatistic(int(mask.sum()), c.sum(), (c * c).sum(), s.sum(), (s * s).sum(), (c * s).sum()))
    return stats[0], stats[1]


def study(control: np.ndarray, treatment: np.ndarray, volumes: Sequence[int], *, reps: int = 200,
          population: Population = Population(), model: ClickModel = ClickModel(), alpha: float = 0.05,
          tuning: float = 5_000, seed: int = 0, metric: str = "ctr") -> list[VolumePoint]:
    """Power of the test on `metric` (METRICS) at each volume, for `treatment` (q x k click probabilities) vs
    `control`. Every metric here rises with more expected clicks near the top, so the arm with more expected
    clicks is the one that should win."""
    expected = np.sign(treatment.sum() - control.sum())  # more expected clicks: the arm that should win
    points = []
    for users in volumes:
        rng = np.random.default_rng([seed, users])
        seq_right = seq_wrong = fixed_right = 0
        lifts = []
        for _ in range(reps):
            c, t = _replicate((control, treatment), users, population, model, rng, metric)
            s = sequential_test(c, t, relative=True, alpha=alpha, tuning=tuning)
            f = z_test(c, t, relative=True, alpha=alpha)
            if s.lift is not None:
                lifts.append(s.lift)
            direction = np.sign(s.lift or 0.0)
            if s.significant:
                seq_right += bool(direction == expected and expected != 0)
                seq_wrong += bool(direction != expected or expected == 0)
            fixed_right += bool(f.significant and np.sign(f.lift or 0) == expected and expected != 0)
        points.append(VolumePoint(users, reps, seq_right / reps, fixed_right / reps, seq_wrong / reps,
                                  float(np.mean(lifts)) if lifts else 0.0))
    return points


def volume_needed(points: Sequence[VolumePoint], target: float = 0.8) -> int | None:
    """The smallest studied volume whose sequential power reaches `target`."""
    return next((p.users for p in points if p.power_sequential >= target), None)


# -- Interleaving: the same users and click model, one merged list per search ------------------------------

@dataclass(frozen=True)
class InterleavedQueries:
    """Per query, `variants` pre-drawn team-draft interleavings of the two arms' rankings: the merged list's
    click probabilities (queries x variants x k) and, per position, the team a click there is credited to
    (experiments/interleaving.py's credited_teams: 1 candidate, 0 control, NO_TEAM in the common prefix)."""
    probs: np.ndarray
    team: np.ndarray

    @property
    def candidate(self) -> np.ndarray:
        return self.team == 1

    @property
    def control(self) -> np.ndarray:
        return self.team == 0

    def ignored_click_share(self) -> float:
        """Expected share of clicks that land in the arms' common prefix (credited to no team)."""
        total = self.probs.sum()
        return float(self.probs[self.team == NO_TEAM].sum() / total) if total > 0 else 0.0


def interleaved_queries(control: Mapping[str, Sequence[str]], treatment: Mapping[str, Sequence[str]],
                        judgments: Judgments, model: ClickModel, k: int = 10, variants: int = 32,
                        seed: int = 0) -> InterleavedQueries:
    """`variants` (even) team-draft merges per query, in antithetic pairs: the second of a pair merges the
    arms in swapped order with the same seed, which is the same draw with every coin flipped (the arm that
    picked first in a round now picks second). Each merge is a fair team-draft draw, as served; the pairs keep
    a small pool from favouring an arm by the luck of its coin flips (real serving flips fresh coins for every
    impression, so it has no such pool bias)."""
    if variants < 2 or variants % 2:
        raise ValueError(f"variants must be a positive even number, got {variants}")
    q = len(judgments.query_ids)
    probs, team = np.zeros((q, variants, k)), np.full((q, variants, k), NO_TEAM, dtype=np.int8)
    for row, query_id in enumerate(judgments.query_ids):
        rankings = [list(control.get(query_id, []))[:k], list(treatment.get(query_id, []))[:k]]
        for v in range(variants):
            pair_seed = hash((seed, row, v // 2)) & 0xFFFFFFFF
            if v % 2 == 0:
                merged = interleave(rankings, k, seed=pair_seed)
                teams = merged.teams
            else:   # the antithetic draw: arms swapped, teams mapped back (0 control, 1 candidate)
                merged = interleave(rankings[::-1], k, seed=pair_seed)
                teams = tuple(1 - t for t in merged.teams)
            n = len(merged.doc_ids)
            probs[row, v, :n] = model.click_probabilities(list(merged.doc_ids), judgments.qrels[query_id])
            team[row, v, :n] = credited_teams(teams, rankings)
    return InterleavedQueries(probs, team)


def mirrored(queries: InterleavedQueries) -> InterleavedQueries:
    """A null with two different rankings: `queries` beside itself with the teams swapped (each search is, with
    probability 1/2, control-vs-candidate or candidate-vs-control), so no arm is better in expectation while
    clicks still land below the common prefix. Identical arms (an A/A test) would test nothing under the
    common-prefix rule: every click lies in the prefix."""
    swapped = np.where(queries.team == NO_TEAM, NO_TEAM, 1 - queries.team).astype(np.int8)
    return InterleavedQueries(np.concatenate([queries.probs, queries.probs], axis=1),
                              np.concatenate([queries.team, swapped], axis=1))


def unit_outcomes(owner: np.ndarray, clicked: np.ndarray, team: np.ndarray,
                  users: int) -> tuple[np.ndarray, np.ndarray]:
    """(s_u, n_u) of the units with a credited impression, from per-impression clicks (impressions x k) and
    credited teams: experiments/interleaving.py's credit, outcome and UnitScores, vectorised."""
    cand, ctrl = (clicked & (team == 1)).sum(axis=1), (clicked & (team == 0)).sum(axis=1)
    credited = (cand + ctrl) > 0
    sums = np.bincount(owner[credited], weights=outcome(cand, ctrl)[credited], minlength=users)
    counts = np.bincount(owner[credited], minlength=users)
    has = counts > 0
    return sums[has], counts[has]


def _replicate_interleaving(queries: InterleavedQueries, users: int, population: Population, model: ClickModel,
                            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The units' (summed outcomes, credited impressions) of one simulated experiment."""
    visits = 1 + rng.poisson(max(population.mean_visits - 1, 0), users)
    searches = np.zeros(users, dtype=int)
    for v in range(int(visits.max())):
        searches += np.where(visits > v, 1 + rng.poisson(max(population.mean_searches - 1, 0), users), 0)
    searches = np.minimum(searches, population.max_searches_per_user)
    propensity = np.exp(model.propensity_sigma * rng.standard_normal(users) - model.propensity_sigma ** 2 / 2)
    owner = np.repeat(np.arange(users), searches)
    query = rng.integers(0, queries.probs.shape[0], owner.size)
    variant = rng.integers(0, queries.probs.shape[1], owner.size)
    p = queries.probs[query, variant] * propensity[owner, None]
    clicked = rng.random(p.shape) < np.clip(p, 0, 1)
    return unit_outcomes(owner, clicked, queries.team[query, variant], users)


def study_interleaving(queries: InterleavedQueries, volumes: Sequence[int], *, reps: int = 200,
                       population: Population = Population(), model: ClickModel = ClickModel(),
                       alpha: float = 0.05, tuning: float = 5_000, seed: int = 0,
                       expected: int | None = None, looks: int = 1) -> list[VolumePoint]:
    """Power of the interleaving preference test (experiments/interleaving.py's `preference`) at each volume
    (every user sees both arms). `expected`: the sign of the preference that should be found (+1 candidate,
    -1 control, 0 none: the A/A case); default from the expected credited clicks. `looks` > 1: users arrive
    evenly over that many daily looks and the always-valid test is read at each (a rejection at any look
    counts), as a team peeking daily would."""
    if expected is None:
        diff = (queries.probs * queries.candidate).sum() - (queries.probs * queries.control).sum()
        expected = int(np.sign(round(float(diff), 9)))
    points = []
    for users in volumes:
        rng = np.random.default_rng([seed, users, 1])
        right = wrong = fixed_right = 0
        means = []
        for _ in range(reps):
            sums, counts = _replicate_interleaving(queries, users, population, model, rng)
            if looks > 1:  # the first looks: a rejection there is final (the verdict would have been read)
                arrival = rng.integers(0, looks, sums.size)
                early = (preference(sums[arrival <= look], counts[arrival <= look], alpha=alpha, sequential=True,
                                    tuning=tuning) for look in range(looks - 1))
                hit = next((p for p in early if p.significant), None)
                if hit is not None:
                    right += bool(np.sign(hit.mean) == expected and expected != 0)
                    wrong += bool(np.sign(hit.mean) != expected or expected == 0)
                    continue
            seq = preference(sums, counts, alpha=alpha, sequential=True, tuning=tuning)
            fixed = preference(sums, counts, alpha=alpha, sequential=False)
            if seq.mean is not None:
                means.append(seq.mean)
            if seq.significant:
                direction = np.sign(seq.mean)
                right += bool(direction == expected and expected != 0)
                wrong += bool(direction != expected or expected == 0)
            fixed_right += bool(fixed.significant and np.sign(fixed.mean) == expected and expected != 0)
        points.append(VolumePoint(users, reps, right / reps, fixed_right / reps, wrong / reps,
                                  float(np.mean(means)) if means else 0.0))
    return points
