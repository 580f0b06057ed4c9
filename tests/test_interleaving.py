"""Team-draft interleaving / multileaving (gateway/interleaving.py): the properties the analysis relies on."""

from __future__ import annotations

import random

import numpy as np

import pytest
from scipy import stats

from gateway.interleaving import interleave, seed_of


def _ranking(rng: random.Random, pool: int, n: int) -> list[str]:
    return rng.sample([f"d{i}" for i in range(pool)], n)


@pytest.mark.parametrize("arms", [2, 3, 4])
def test_each_arm_picks_a_prefix_of_its_ranking(arms):
    rng = random.Random(arms)
    for trial in range(300):
        rankings = [_ranking(rng, 25, rng.randint(0, 12)) for _ in range(arms)]
        out = interleave(rankings, k=10, seed=trial)
        assert len(out.doc_ids) == len(set(out.doc_ids)) == len(out.teams) <= 10
        for arm, ranking in enumerate(rankings):
            picked = [d for d, team in zip(out.doc_ids, out.teams) if team == arm]
            # What the arm picked, in order, is its ranking with documents shown earlier by others skipped.
            position = 0
            for doc in picked:
                index = ranking.index(doc, position)
                assert all(skipped in out.doc_ids[:out.doc_ids.index(doc)] for skipped in ranking[position:index])
                position = index + 1
        # Nothing is lost: the list is full unless every ranking ran out.
        assert len(out.doc_ids) == min(10, len(set().union(*map(set, rankings))))


def test_identical_rankings_split_the_positions_evenly():
    ranking = [f"d{i}" for i in range(10)]
    firsts, positions = [0, 0], [0, 0]
    for trial in range(4000):
        out = interleave([ranking, ranking], k=10, seed=seed_of(f"impression-{trial}"))
        assert out.doc_ids == tuple(ranking)  # the same list, whoever picks
        firsts[out.teams[0]] += 1
        for team in out.teams:
            positions[team] += 1
    assert stats.binomtest(firsts[0], sum(firsts), 0.5).pvalue > 0.001
    assert positions[0] == positions[1]  # teams of two alternate within every round


def test_three_arms_share_first_picks_evenly():
    ranking = [f"d{i}" for i in range(9)]
    firsts = [0, 0, 0]
    for trial in range(3000):
        firsts[interleave([ranking] * 3, k=9, seed=trial).teams[0]] += 1
    assert stats.chisquare(firsts).pvalue > 0.001


def test_replay_from_the_impression_is_exact():
    rng = random.Random(5)
    rankings = [_ranking(rng, 30, 10), _ranking(rng, 30, 10)]
    first = interleave(rankings, 10, seed_of("imp-123"))
    assert interleave(rankings, 10, first.seed) == first
    assert seed_of("imp-123") == seed_of("imp-123") != seed_of("imp-124")


def test_needs_two_rankings():
    with pytest.raises(ValueError, match="at least two"):
        interleave([["a"]], 10, 1)


# --- analysis (experiments/interleaving.py) and the volume study ------------------------------------------

def test_clicks_are_credited_to_the_team_of_their_position():
    from experiments.interleaving import credit

    teams = (1, 0, 0, 1, 2)
    assert credit(teams, [1, 4, 4], 3) == [0, 2, 0]   # a repeated click on one position counts once
    assert credit(teams, [2, 3, 5, 9], 3) == [2, 0, 1]  # a position not shown is ignored


def test_unit_scores_and_the_preference_test():
    from experiments.interleaving import UnitScores, preference

    scores = UnitScores.empty()
    scores.add("u1", 2, 0)   # the candidate wins the impression: +1, however many clicks
    scores.add("u1", 0, 1)   # the control wins: -1
    scores.add("u1", 3, 1)   # +1
    scores.add("u2", 0, 0)   # no credited click: says nothing
    scores.add("u3", 1, 1)   # a tie counts 0
    assert scores.units() == ([1.0, 0.0], [3, 1])
    assert sorted(scores.scores()) == [0.0, pytest.approx(1 / 3)]
    rng = np.random.default_rng(1)
    strong = preference(list(rng.normal(0.3, 1, 2000)), sequential=True, tuning=2000)
    assert strong.significant and strong.ci_low > 0 and strong.wins > strong.losses
    fixed = preference(list(rng.normal(0.3, 1, 2000)), sequential=False)
    assert fixed.ci_high - fixed.ci_low < strong.ci_high - strong.ci_low   # always-valid is wider
    assert preference([], sequential=True).reason and preference([1.0]).mean is None
    assert preference([1.0, 1.0]).reason == "every unit has the same score: no variance to test"
    # Without counts, every unit counts once: the one-sample t test of the unit sums (scipy's, as reference).
    sample = list(np.random.default_rng(2).normal(0.1, 1, 300))
    ours, theirs = preference(sample, sequential=False), stats.ttest_1samp(sample, 0.0)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx(tuple(theirs.confidence_interval()), rel=1e-9)
    with pytest.raises(ValueError, match="counts"):
        preference([1.0, 2.0], [1])


def test_the_preference_pools_impressions_with_a_cluster_robust_error_per_unit():
    """R = sum s_u / sum n_u; its standard error, computed here from the impressions themselves, is the
    cluster-robust one with the unit as the cluster (what the delta method over units gives)."""
    from experiments.interleaving import UnitScores, outcome, preference

    rng = np.random.default_rng(3)
    scores, impressions = UnitScores.empty(), []
    for u in range(400):
        lean = rng.normal(0.05, 0.3)    # units differ: outcomes of one unit are correlated
        for _ in range(1 + rng.poisson(2)):
            cand, ctrl = rng.poisson(0.6 + lean if lean > -0.6 else 0.0), rng.poisson(0.6)
            scores.add(f"u{u}", cand, ctrl)
            if cand + ctrl:
                impressions.append((u, outcome(cand, ctrl)))
    sums, counts = scores.units()
    fixed = preference(sums, counts, sequential=False)
    units = np.array([u for u, _ in impressions])
    y = np.array([o for _, o in impressions], dtype=float)
    r = y.mean()
    n = len(set(units.tolist()))
    cluster = np.bincount(units, weights=y - r)
    se = np.sqrt((cluster ** 2).sum() * n / (n - 1)) / y.size
    half = stats.t.ppf(0.975, n - 1) * se
    assert fixed.units == n and fixed.mean == pytest.approx(r, rel=1e-12)
    assert (fixed.ci_low, fixed.ci_high) == pytest.approx((r - half, r + half), rel=1e-9)
    assert fixed.wins == sum(s > 0 for s in sums) and fixed.wins + fixed.losses + fixed.ties == n
    seq = preference(sums, counts, sequential=True, tuning=n)
    assert seq.mean == fixed.mean and seq.ci_high - seq.ci_low > fixed.ci_high - fixed.ci_low


# --- the common-prefix rule (Chapelle, Joachims, Radlinski & Yue 2012) -------------------------------------

def test_common_prefix():
    from experiments.interleaving import common_prefix

    assert common_prefix([["a", "b", "c"], ["a", "b", "d"]]) == 2
    assert common_prefix([["a", "b"], ["b", "a"]]) == 0
    assert common_prefix([["a", "b", "c"], ["a", "b", "c"]]) == 3
    assert common_prefix([["a", "b"], ["a", "b", "c"]]) == 2      # one list ran out: nothing more is shared
    assert common_prefix([["a", "b", "c"], ["a", "b", "x"], ["a", "y", "c"]]) == 1  # all arms (multileaving)
    assert common_prefix([["a", "b"]]) == 0 and common_prefix([]) == 0 and common_prefix([[], ["a"]]) == 0


@pytest.mark.parametrize("arms", [2, 3])
def test_team_draft_shows_the_common_prefix_first_whoever_picks(arms):
    """The rule ignores positions 1..L; that is right only because the merge shows the shared prefix there."""
    from experiments.interleaving import NO_TEAM, common_prefix, credited_teams

    rng = random.Random(arms * 11)
    for trial in range(300):
        shared = _ranking(rng, 40, rng.randint(0, 6))
        rest = [d for d in (f"d{i}" for i in range(40)) if d not in shared]
        rankings = [shared + rng.sample(rest, 10 - len(shared)) for _ in range(arms)]
        length = common_prefix(rankings)
        assert length >= len(shared)
        out = interleave(rankings, 10, seed=trial)
        assert list(out.doc_ids[:length]) == rankings[0][:length]
        credited = credited_teams(out.teams, rankings)
        assert credited[:length] == (NO_TEAM,) * length and credited[length:] == out.teams[length:]


def test_a_click_in_the_common_prefix_gets_no_credit_one_below_does():
    from experiments.interleaving import credit

    control, candidate = ["a", "b", "c", "d"], ["a", "b", "d", "c"]   # same top 2, then they differ
    for seed in range(50):
        out = interleave([control, candidate], 4, seed)
        assert out.doc_ids[:2] == ("a", "b")
        rankings = [control, candidate]
        assert credit(out.teams, [1], 2, rankings) == [0, 0]
        assert credit(out.teams, [1, 2], 2, rankings) == [0, 0]
        below = [0, 0]
        below[out.teams[2]] = 1
        assert credit(out.teams, [3], 2, rankings) == below
        assert credit(out.teams, [2, 3], 2, rankings) == below
        # Without the rankings (rows logged before the rule), every shown position is credited, as before.
        assert sum(credit(out.teams, [1, 2, 3], 2)) == 3
    # Identical rankings (an A/A test with one encoder): no click can be credited at all.
    same = interleave([control, control], 4, 7)
    assert credit(same.teams, [1, 2, 3, 4], 2, [control, control]) == [0, 0]


def test_the_volume_study_scores_exactly_like_the_report():
    """gateway/simulation/volume.py's vectorised scoring gives the same unit sums and counts as the report's
    path, impression by impression: credit() with the arms' rankings, then UnitScores."""
    from experiments.interleaving import UnitScores, credit, credited_teams, preference
    from gateway.simulation.volume import unit_outcomes

    rng = np.random.default_rng(5)
    pyrng = random.Random(5)
    impressions, owner, clicked, team = [], [], [], []
    for i in range(3000):
        shared = _ranking(pyrng, 30, pyrng.randint(0, 4))
        rest = [d for d in (f"d{i}" for i in range(30)) if d not in shared]
        rankings = [shared + pyrng.sample(rest, 6 - len(shared)) for _ in range(2)]
        out = interleave(rankings, 6, seed=i)
        clicks = rng.random(6) < np.array([0.5, 0.4, 0.3, 0.2, 0.2, 0.1])
        unit = int(rng.integers(0, 500))
        impressions.append((unit, out.teams, rankings, [p + 1 for p in np.flatnonzero(clicks)]))
        owner.append(unit)
        clicked.append(clicks)
        team.append(credited_teams(out.teams, rankings))
    sums, counts = unit_outcomes(np.array(owner), np.array(clicked), np.array(team), 500)
    scores = UnitScores.empty()
    for unit, teams, rankings, positions in sorted(impressions, key=lambda x: x[0]):
        control_clicks, candidate_clicks = credit(teams, positions, 2, rankings)
        scores.add(unit, candidate_clicks, control_clicks)
    ref_sums, ref_counts = scores.units()
    assert sorted(zip(ref_sums, ref_counts)) == sorted(zip(sums.tolist(), counts.tolist()))
    assert preference(sums, counts) == preference(ref_sums, ref_counts)


def test_team_balance_alerts_on_a_skewed_merge():
    from experiments.interleaving import team_balance

    assert team_balance([500, 510], [5000, 5000], ["control", "candidate"])["status"] == "ok"
    skewed = team_balance([700, 300], [5000, 5000], ["control", "candidate"])
    assert skewed["alert"] and skewed["first_picks_p_value"] < 0.001


def _judgments_for(n_queries: int):
    from gateway.simulation.users import Judgments

    return Judgments({str(q): f"query {q}" for q in range(n_queries)},
                     {str(q): {f"rel{q}": 1} for q in range(n_queries)})


def test_interleaving_needs_far_fewer_users_than_ab_and_holds_alpha_in_aa():
    from gateway.simulation.users import ClickModel
    from gateway.simulation.volume import click_matrix, interleaved_queries, mirrored, study, study_interleaving

    judgments = _judgments_for(50)
    model = ClickModel()
    control = {q: ["a", "b", f"rel{q}", "c"] for q in judgments.queries}
    # A modest gain: one query in five ranks its relevant document 2nd instead of 3rd.
    candidate = {q: ["a", f"rel{q}", "b", "c"] if int(q) % 5 == 0 else control[q] for q in judgments.queries}
    merged = interleaved_queries(control, candidate, judgments, model, k=4)
    # Clicks on "a" (both arms' first result) and on queries both arms rank alike are credited to no team.
    assert 0.7 < merged.ignored_click_share() < 0.9
    inter = study_interleaving(merged, [1200], reps=40, model=model, seed=1, tuning=2400)[0]
    ab = study(click_matrix(control, judgments, model, k=4), click_matrix(candidate, judgments, model, k=4),
               [1200], reps=40, model=model, seed=1, metric="mrr", tuning=2400)[0]
    # Every interleaved user compares both arms on the same searches: 1,200 interleaved users reach 80% power
    # where the same 1,200 users split between A/B arms stay far below it.
    assert inter.power_sequential >= 0.8 > ab.power_sequential + 0.2 and inter.wrong_sequential == 0
    # A/A with one ranking: every click is in the common prefix, so nothing is credited and nothing is found.
    same = interleaved_queries(control, control, judgments, model, k=4)
    assert same.ignored_click_share() == 1.0
    aa = study_interleaving(same, [400], reps=20, model=model, seed=2, expected=0)[0]
    assert aa.wrong_sequential == 0 and aa.power_sequential == 0 and aa.mean_lift == 0
    # The null that still tests something: the two different rankings, each search with the arms' roles swapped
    # by a coin, so clicks land below the prefix but no arm is better.
    null = study_interleaving(mirrored(merged), [1200], reps=150, model=model, seed=2, expected=0)[0]
    assert null.wrong_sequential <= 0.05 and abs(null.mean_lift) < 0.05


def test_aa_interleaving_with_daily_looks_holds_alpha():
    """Two different rankings of equal quality (irrelevant "a" and "b" swapped above the relevant document): the
    preference is 0 by symmetry, and clicks below the (empty) common prefix are credited, so the 14 daily
    looks of the always-valid test are really exercised."""
    from gateway.simulation.users import ClickModel
    from gateway.simulation.volume import interleaved_queries, study_interleaving

    judgments = _judgments_for(50)
    model = ClickModel()
    one = {q: ["a", f"rel{q}", "b", "c"] for q in judgments.queries}
    other = {q: ["b", f"rel{q}", "a", "c"] for q in judgments.queries}
    merged = interleaved_queries(one, other, judgments, model, k=4)
    assert merged.ignored_click_share() == 0.0
    point = study_interleaving(merged, [600], reps=200, model=model, seed=4, expected=0, looks=14, tuning=1200)[0]
    assert point.wrong_sequential <= 0.05 and point.power_sequential == 0


def test_the_volume_study_draws_merges_in_antithetic_pairs():
    """Each pair of pre-drawn merges is one draw and its coin-flipped twin, so a pool of merges cannot favour an
    arm by luck: for two rankings of equal quality the pool's expected credit is exactly even."""
    from gateway.simulation.users import ClickModel
    from gateway.simulation.volume import interleaved_queries

    judgments = _judgments_for(30)
    one = {q: ["a", f"rel{q}", "b", "c", "d"] for q in judgments.queries}
    other = {q: ["b", f"rel{q}", "a", "d", "c"] for q in judgments.queries}
    merged = interleaved_queries(one, other, judgments, ClickModel(), k=5, variants=8)
    assert (merged.probs * merged.candidate).sum() == pytest.approx((merged.probs * merged.control).sum(), rel=1e-12)
    for row in range(30):
        for v in range(0, 8, 2):
            first, twin = merged.team[row, v], merged.team[row, v + 1]
            # Whoever picked first in a round picks second in the twin: the first position changes hands.
            assert first[0] != twin[0]
    with pytest.raises(ValueError, match="even"):
        interleaved_queries(one, other, judgments, ClickModel(), k=5, variants=3)
