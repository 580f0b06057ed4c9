"""Assignment: uniform, sticky across processes, monotone in allocation, layers disjoint, guard on changes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone

from scipy import stats

from experiments.schema import Arm, Design, Experiment, Metrics
from experiments.state import ExperimentState
from gateway.assignment import Assigner, bucket, choose_arm

NOW = datetime(2026, 11, 15, tzinfo=timezone.utc)


def experiment(name="exp", weights=(50, 50), allocation=1.0, status="running", layer="retrieval",
               layer_buckets=(0, 10_000), salt=None, start=datetime(2026, 11, 1, tzinfo=timezone.utc), end=None):
    arms = tuple(Arm(f"arm{i}", w, f"enc{i}", f"idx{i}") for i, w in enumerate(weights))
    return Experiment(name, "d", "o", layer, "user", salt or f"{name}-salt", status, start, end, allocation, "arm0",
                      arms, Metrics("ctr"), Design(mde=0.02), layer_buckets)


def test_buckets_are_uniform_over_100k_ids():
    counts = Counter(bucket(f"salt:user-{i}") // 100 for i in range(100_000))  # 100 groups of 100 buckets
    observed = [counts[g] for g in range(100)]
    assert stats.chisquare(observed).pvalue > 0.001


def test_arm_split_matches_weights_over_100k_ids():
    exp = experiment(weights=(20, 30, 50))
    counts = Counter(choose_arm(exp, f"u{i}").name for i in range(100_000))
    observed = [counts[f"arm{i}"] for i in range(3)]
    assert stats.chisquare(observed, [20_000, 30_000, 50_000]).pvalue > 0.001


def test_sticky_across_processes():
    code = ("from gateway.assignment import bucket, arm_bucket; "
            "print([bucket(f's:u{i}') for i in range(50)], [arm_bucket('s', f'u{i}') for i in range(50)])")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    from gateway.assignment import arm_bucket
    here = str([bucket(f"s:u{i}") for i in range(50)]) + " " + str([arm_bucket("s", f"u{i}") for i in range(50)])
    assert first == second == here + "\n"


def test_golden_bucket_pins_the_hash():
    # sha256("ftvb-2026-11:alice") -> first 8 hex digits, mod 10_000; pinned so the rule can never drift.
    import hashlib
    assert bucket("ftvb-2026-11:alice") == int(hashlib.sha256(b"ftvb-2026-11:alice").hexdigest()[:8], 16) % 10_000


def test_raising_allocation_keeps_enrolled_units_in_their_arm():
    low, high = experiment(allocation=0.2), experiment(allocation=0.6)
    units = [f"u{i}" for i in range(20_000)]
    a_low = Assigner([low], "retrieval").assign
    a_high = Assigner([high], "retrieval").assign
    enrolled_low = [u for u in units if a_low(u, NOW).enrolled]
    assert 0.18 < len(enrolled_low) / len(units) < 0.22
    for u in enrolled_low:
        assert a_high(u, NOW).enrolled and a_high(u, NOW).arm == a_low(u, NOW).arm
    assert 0.58 < sum(a_high(u, NOW).enrolled for u in units) / len(units) < 0.62


def test_units_not_enrolled_get_control_and_are_marked():
    assigner = Assigner([experiment(allocation=0.3)], "retrieval")
    out = [assigner.assign(f"u{i}", NOW) for i in range(2000)]
    assert all(a.arm.name == "arm0" for a in out if not a.enrolled)
    assert {a.arm.name for a in out if a.enrolled} == {"arm0", "arm1"}


def test_a_layer_puts_a_unit_in_at_most_one_experiment_and_slices_split_traffic():
    left = experiment("left", layer_buckets=(0, 3000))
    right = experiment("right", layer_buckets=(3000, 10_000))
    other_layer = experiment("other", layer="ranking")
    assigner = Assigner([left, right, other_layer], "retrieval")
    names = Counter(assigner.assign(f"u{i}", NOW).experiment_name for i in range(20_000))
    assert set(names) == {"left", "right"}
    assert 0.28 < names["left"] / 20_000 < 0.32


def test_no_running_experiment_gives_the_default_arm():
    gap = experiment("gap", layer_buckets=(0, 5000))
    default = Arm("default", 1, "enc-default", "idx-default")
    assigner = Assigner([gap], "retrieval", default)
    out = [assigner.assign(f"u{i}", NOW) for i in range(1000)]
    outside = [a for a in out if a.experiment is None]
    assert outside and all(a.arm is default and not a.enrolled for a in outside)
    # Without a configured default, the control of the layer's first non-draft experiment serves.
    assert Assigner([gap], "retrieval").default_arm.encoder == "enc0"


def test_stopped_ended_and_not_started_experiments():
    stopped = Assigner([experiment(status="stopped")], "retrieval")
    assert {(a.arm.name, a.enrolled) for a in (stopped.assign(f"u{i}", NOW) for i in range(500))} == {("arm0", False)}
    ended = Assigner([experiment(end=NOW - timedelta(days=1))], "retrieval")
    assert all(not ended.assign(f"u{i}", NOW).enrolled for i in range(200))
    future = Assigner([experiment(start=NOW + timedelta(days=1))], "retrieval")
    assert all(future.assign(f"u{i}", NOW).experiment is None for i in range(200))
    admin = Assigner([experiment()], "retrieval", is_admin_stopped=lambda e: True)
    assert all(admin.assign(f"u{i}", NOW).arm.name == "arm0" for i in range(200))


def test_changing_weights_of_a_running_experiment_is_refused_with_the_reason(tmp_path):
    state = ExperimentState.load(tmp_path / "state.json")
    state.record([experiment(weights=(50, 50), allocation=0.5)])
    reloaded = ExperimentState.load(tmp_path / "state.json")
    assert reloaded.refusals(experiment(weights=(1, 1), allocation=0.5)) == []  # same shares
    assert reloaded.refusals(experiment(weights=(50, 50), allocation=0.8)) == []  # raising allocation is safe
    refused = dict(reloaded.refusals(experiment(weights=(70, 30), allocation=0.4, salt="new")))
    assert set(refused) == {"arms", "allocation", "salt"}
    assert "break the analysis" in refused["arms"]
    # A stopped experiment can be edited freely.
    assert reloaded.refusals(experiment(weights=(70, 30), status="stopped")) == []


def test_admin_stop_holds_until_a_later_start(tmp_path):
    state = ExperimentState.load(tmp_path / "state.json")
    state.stop("exp", NOW)
    again = ExperimentState.load(tmp_path / "state.json")
    assert again.admin_stopped(experiment())
    assert not again.admin_stopped(experiment(start=NOW + timedelta(days=1)))
    assert not again.admin_stopped(experiment("other"))
