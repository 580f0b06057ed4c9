"""The interleaving report on real chdb rows: clicks in the arms' common prefix count for no arm, clicks below it
are credited to their team, and the preference is experiments/interleaving.py's over the credited impressions."""

from __future__ import annotations

import secrets
from datetime import timedelta

import numpy as np
import pytest

from experiments.interleaving import outcome, preference
from experiments.report import build_report
from experiments.schema import parse_experiment
from gateway.eventlog import store, tables
from gateway.eventlog.events import COLUMNS, Feedback, Interleaving, feedback_event_id
from gateway.interleaving import interleave, seed_of
from metric_events import START, experiment_config

import msgspec

CONTROL = ["x", "y", "p", "q", "r"]     # both arms rank x, y first: the common prefix is 2 positions long
CANDIDATE = ["x", "y", "q", "p", "r"]   # the candidate ranks q above p


def _log(client, name: str, units: int, rng: np.random.Generator, *, log_rankings: bool = True) -> dict:
    """Interleaved impressions of CONTROL and CANDIDATE with clicks: always on position 1 (x, in the prefix) and
    on q or p below it. Team-draft always credits q to the candidate and p to the control (each is the arm's
    own pick in round two). Returns what the report should find, computed here without the report's code."""
    rows, clicks, sums, counts = [], [], {}, {}
    expected = {"clicks": 0, "prefix": 0}
    for u in range(units):
        unit = f"{name}-u{u}"
        for i in range(1 + int(rng.integers(0, 4))):
            impression = secrets.token_urlsafe(12)
            ts = START + timedelta(hours=int(rng.integers(0, 48)))
            merged = interleave([CONTROL, CANDIDATE], 5, seed_of(impression))
            rows.append(Interleaving(impression, ts, name, unit, ["control", "treatment"], list(merged.teams),
                                     [CONTROL, CANDIDATE] if log_rankings else [], merged.seed))
            chosen = ["x"] + [d for d, p in (("q", 0.55), ("p", 0.35)) if rng.random() < p]
            for doc in chosen:
                position = merged.doc_ids.index(doc) + 1
                clicks.append(Feedback(feedback_event_id(impression, "click", doc), impression, ts, name,
                                       "interleaved", unit, "click", doc, position, 1.0))
            expected["clicks"] += len(chosen)
            expected["prefix"] += 1 if log_rankings else 0
            cand, ctrl = ("q" in chosen), ("p" in chosen)
            if not log_rankings:  # without the rankings the prefix is unknown: x goes to its team, as before
                x_team = merged.teams[merged.doc_ids.index("x")]
                cand, ctrl = cand + (x_team == 1), ctrl + (x_team == 0)
            if cand + ctrl:
                sums[unit] = sums.get(unit, 0) + outcome(int(cand), int(ctrl))
                counts[unit] = counts.get(unit, 0) + 1
    client.insert("abgate.interleavings", [msgspec.structs.astuple(r) for r in rows],
                  column_names=list(COLUMNS[Interleaving]))
    client.insert("abgate.feedback", [msgspec.structs.astuple(c) for c in clicks],
                  column_names=list(COLUMNS[Feedback]))
    expected["preference"] = preference([float(sums[u]) for u in sums], [counts[u] for u in sums],
                                        sequential=True, tuning=5_000)
    expected["impressions"] = len(rows)
    return expected


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    client = store.connect(f"chdb://{tmp_path_factory.mktemp('designs-report')}?database=abgate")
    tables.migrate(client)
    yield client
    client.close()


def _experiment(name: str):
    config = experiment_config(name, days=3)
    config["design"] = {"type": "interleaving", "alpha": 0.05, "mde": 0.02, "sequential": True}
    experiment, problems = parse_experiment(config)
    assert not problems, problems
    return experiment


def test_clicks_in_the_common_prefix_count_for_no_arm(client):
    expected = _log(client, "prefix", 400, np.random.default_rng(1))
    report = build_report(client, _experiment("prefix"), now=START + timedelta(days=3))
    traffic = report["traffic"]
    assert traffic["impressions"] == expected["impressions"]
    assert traffic["clicks"] == expected["clicks"] and traffic["clicks_in_common_prefix"] == expected["prefix"]
    (pref,) = report["preferences"]
    want = expected["preference"]
    assert pref["units"] == want.units and pref["mean"] == pytest.approx(want.mean, rel=1e-12)
    assert (pref["ci_low"], pref["ci_high"]) == pytest.approx((want.ci_low, want.ci_high), rel=1e-9)
    assert (pref["wins"], pref["losses"], pref["ties"]) == (want.wins, want.losses, want.ties)
    # q (the candidate's) is clicked more than p: the candidate is preferred, and the report says why some
    # clicks counted for nobody.
    assert pref["mean"] > 0 and pref["direction"] == "better" and report["verdict"]["status"] == "ship"
    assert any("common prefix" in r for r in report["verdict"]["reasons"])
    assert report["balance"]["status"] == "ok"


def test_rows_without_rankings_are_credited_as_before(client):
    expected = _log(client, "legacy", 150, np.random.default_rng(2), log_rankings=False)
    report = build_report(client, _experiment("legacy"), now=START + timedelta(days=3))
    assert report["traffic"]["clicks_in_common_prefix"] == 0
    (pref,) = report["preferences"]
    assert pref["units"] == expected["preference"].units
    assert pref["mean"] == pytest.approx(expected["preference"].mean, rel=1e-12)
