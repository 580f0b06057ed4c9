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
    scores.add("u1", 2, 0)
    scores.add("u1", 0, 1)
    scores.add("u2", 0, 0)   # no credited click: says nothing
    scores.add("u3", 1, 1)   # a tie counts 0
    assert sorted(scores.scores()) == [0.0, 0.5]
    rng = np.random.default_rng(1)
    strong = preference(list(rng.normal(0.3, 1, 2000)), sequential=True, tuning=2000)
    assert strong.significant and strong.ci_low > 0 and strong.wins > strong.losses
    fixed = preference(list(rng.normal(0.3, 1, 2000)), sequential=False)
    assert fixed.ci_high - fixed.ci_low < strong.ci_high - strong.ci_low   # always-valid is wider
    ref = stats.ttest_1samp(np.array(rng.normal(0, 1, 50)), 0.0)
    assert preference([], sequential=True).reason and preference([1.0]).mean is None
    assert preference([1.0, 1.0]).reason == "every unit has the same score: no variance to test"
    assert ref.pvalue > 0  # scipy's one-sample t is the fixed-horizon reference below
    sample = list(np.random.default_rng(2).normal(0.1, 1, 300))
    ours, theirs = preference(sample, sequential=False), stats.ttest_1samp(sample, 0.0)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-9)
    assert (ours.ci_low, ours.ci_high) == pytest.approx(tuple(theirs.confidence_interval()), rel=1e-9)


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
    from gateway.simulation.volume import click_matrix, interleaved_queries, study, study_interleaving

    judgments = _judgments_for(50)
    model = ClickModel()
    control = {q: ["a", "b", f"rel{q}", "c"] for q in judgments.queries}
    # A modest gain: one query in five ranks its relevant document 2nd instead of 3rd.
    candidate = {q: ["a", f"rel{q}", "b", "c"] if int(q) % 5 == 0 else control[q] for q in judgments.queries}
    merged = interleaved_queries(control, candidate, judgments, model, k=4)
    inter = study_interleaving(merged, [1200], reps=40, model=model, seed=1, tuning=2400)[0]
    ab = study(click_matrix(control, judgments, model, k=4), click_matrix(candidate, judgments, model, k=4),
               [1200], reps=40, model=model, seed=1, metric="mrr", tuning=2400)[0]
    # Every interleaved user compares both arms on the same searches: 1,200 interleaved users reach 80% power
    # where the same 1,200 users split between A/B arms stay far below it.
    assert inter.power_sequential >= 0.8 > ab.power_sequential + 0.2 and inter.wrong_sequential == 0
    aa = study_interleaving(interleaved_queries(control, control, judgments, model, k=4), [400], reps=150,
                            model=model, seed=2, expected=0)[0]
    assert aa.wrong_sequential <= 0.05


def test_aa_interleaving_with_daily_looks_holds_alpha():
    from gateway.simulation.users import ClickModel
    from gateway.simulation.volume import interleaved_queries, study_interleaving

    judgments = _judgments_for(50)
    model = ClickModel()
    same = {q: ["a", f"rel{q}", "b", "c"] for q in judgments.queries}
    point = study_interleaving(interleaved_queries(same, same, judgments, model, k=4), [600], reps=200,
                               model=model, seed=4, expected=0, looks=14, tuning=1200)[0]
    assert point.wrong_sequential <= 0.05 and point.power_sequential == 0
