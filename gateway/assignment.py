"""Sticky assignment of units (users or sessions) to experiments and arms.

The exact rule, for a unit id `u` and the gateway's serving layer `L` (setting `layer`, default "retrieval"):

1. h(s) = int(sha256(s.encode()).hexdigest()[:8], 16) % 10_000 — a bucket in [0, 10000). Pure function of the
   strings: the same unit gets the same buckets in every process, on every host, after every restart.
2. Layer slot: b_L = h(f"layer:{L}:{u}"). Experiment E of layer L owns slots
   E.layer_buckets = [start, end) (default the whole layer). Running experiments of a layer have disjoint
   slices (validated by experiments/loader.py), so a unit is in at most one running experiment of a layer.
   The layer hash does not involve any experiment's salt, so slices stay independent across experiments.
3. The unit's experiment is the running E whose slice holds b_L. If none, a stopped E whose slice holds b_L
   (a stopped experiment sends everyone in its slice to its control arm, enrolled=false). If none, the unit
   gets the default arm (below), experiment=None, enrolled=false. Status is evaluated at request time with
   the start/end window: before start counts as draft (not served), after end as stopped. An admin stop
   (experiments/state.py) counts as stopped.
4. Enrollment: b_E = h(f"{E.salt}:{u}"); enrolled iff b_E < round(E.allocation * 10_000). Units not enrolled
   get E's control arm and are logged with enrolled=false (not analysed).
5. Arm: a_E = h(f"{E.salt}:arm:{u}"), a hash independent of b_E. Arm weights are turned into cumulative
   bucket boundaries round(10_000 * cumulative_weight / total_weight) in the order the arms are listed; the
   arm is the first whose boundary exceeds a_E.

Consequences: raising the allocation only adds units (b_E < old threshold stays true) and never changes
anyone's arm (a_E does not depend on allocation). Changing weights, salt or slice moves enrolled units, so it
is refused for a running experiment unless forced (see experiments/state.py for how the previous definition
is compared).

Default arm: settings `default_encoder` + `default_index` when given; otherwise the control arm of the first
experiment (by name) of the serving layer that is not a draft, else of the first experiment of that layer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

from experiments.schema import BUCKETS, Arm, Experiment

DEFAULT_ARM_NAME = "default"


def bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % BUCKETS


def layer_bucket(layer: str, unit_id: str) -> int:
    return bucket(f"layer:{layer}:{unit_id}")


def enrollment_bucket(salt: str, unit_id: str) -> int:
    return bucket(f"{salt}:{unit_id}")


def arm_bucket(salt: str, unit_id: str) -> int:
    return bucket(f"{salt}:arm:{unit_id}")


def arm_boundaries(arms: tuple[Arm, ...]) -> list[int]:
    total = sum(a.weight for a in arms)
    out, running = [], 0.0
    for arm in arms:
        running += arm.weight
        out.append(round(BUCKETS * running / total))
    out[-1] = BUCKETS  # float rounding must never leave a bucket without an arm
    return out


def choose_arm(exp: Experiment, unit_id: str) -> Arm:
    b = arm_bucket(exp.salt, unit_id)
    for arm, boundary in zip(exp.arms, arm_boundaries(exp.arms)):
        if b < boundary:
            return arm
    return exp.arms[-1]


def is_enrolled(exp: Experiment, unit_id: str) -> bool:
    return enrollment_bucket(exp.salt, unit_id) < round(exp.allocation * BUCKETS)


@dataclass(frozen=True)
class Assignment:
    experiment: Experiment | None
    arm: Arm
    enrolled: bool

    @property
    def experiment_name(self) -> str | None:
        return self.experiment.name if self.experiment else None


class Assigner:
    """Assigns units for one layer; immutable, so hot reload swaps a whole new Assigner in one reference."""

    def __init__(self, experiments: list[Experiment], layer: str, default_arm: Arm | None = None,
                 is_admin_stopped: Callable[[Experiment], bool] = lambda e: False) -> None:
        self.layer = layer
        self.experiments = sorted((e for e in experiments if e.layer == layer), key=lambda e: e.name)
        self._admin_stopped = {e.name for e in self.experiments if is_admin_stopped(e)}
        self.default_arm = default_arm or self._fallback_default()

    def _fallback_default(self) -> Arm:
        candidates = [e for e in self.experiments if e.status != "draft"] or self.experiments
        if not candidates:
            raise ValueError(f"no experiment in layer {self.layer!r} and no default arm configured")
        control = candidates[0].control_arm
        return Arm(DEFAULT_ARM_NAME, 1.0, control.encoder, control.index, control.top_k, control.dimensions,
                   control.score_threshold)

    def status(self, exp: Experiment, now: datetime) -> str:
        status = exp.serving_status(now)
        return "stopped" if status == "running" and exp.name in self._admin_stopped else status

    def assign(self, unit_id: str, now: datetime | None = None) -> Assignment:
        now = now or datetime.now(timezone.utc)
        slot = layer_bucket(self.layer, unit_id)
        stopped = None
        for exp in self.experiments:
            start, end = exp.layer_buckets
            if not start <= slot < end:
                continue
            status = self.status(exp, now)
            if status == "running":
                if not is_enrolled(exp, unit_id):
                    return Assignment(exp, exp.control_arm, False)
                return Assignment(exp, choose_arm(exp, unit_id), True)
            if status == "stopped" and stopped is None:
                stopped = exp
        if stopped is not None:
            return Assignment(stopped, stopped.control_arm, False)
        return Assignment(None, self.default_arm, False)

    def serving_arms(self) -> list[Arm]:
        """Every arm a request could be sent to (drafts included, so a start time passing needs no reload)."""
        arms = [self.default_arm]
        for exp in self.experiments:
            arms.extend(exp.arms)
        return arms
