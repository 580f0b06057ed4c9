"""Synthetic event logs for the metrics, report and dashboard tests, plus a plain-Python metric reference.

`generate()` draws impressions and feedback with known arm effects and the mess a real log has: replayed
duplicates (same id, inserted twice), repeated clicks on one document, non-enrolled impressions, impressions
outside the window, feedback naming no impression, zero-result searches and another experiment's events.
`reference()` computes every built-in metric's per-arm sums from the same Python objects with numpy, with no
SQL, so the ClickHouse queries are checked against an independent computation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np

import msgspec

from gateway.eventlog.events import COLUMNS, Feedback, Impression

START = datetime(2026, 11, 1, tzinfo=timezone.utc)


@dataclass
class EventLog:
    impressions: list[Impression] = field(default_factory=list)
    feedback: list[Feedback] = field(default_factory=list)
    duplicates: list = field(default_factory=list)   # exact copies, inserted in a second batch

    def insert(self, client, database: str = "abgate") -> None:
        for batch in ((self.impressions, self.feedback), split_types(self.duplicates)):
            for events in batch:
                if events:
                    table = "impressions" if isinstance(events[0], Impression) else "feedback"
                    client.insert(f"{database}.{table}", [msgspec.structs.astuple(e) for e in events],
                                  column_names=list(COLUMNS[type(events[0])]))


def split_types(events: list) -> tuple[list, list]:
    return [e for e in events if isinstance(e, Impression)], [e for e in events if isinstance(e, Feedback)]


def _id(rng: np.random.Generator) -> str:
    return secrets.token_urlsafe(4) + str(rng.integers(1 << 60))


def generate(experiment: str = "exp", arms: dict[str, float] | None = None, *, units: int = 300, days: int = 3,
             seed: int = 1, start: datetime = START, weights: dict[str, float] | None = None,
             noise: bool = True, zero_results: float = 0.05) -> EventLog:
    """arms: name -> click probability per shown position-1 result (position p clicks with prob/p);
    zero_results: the share of searches that return nothing."""
    rng = np.random.default_rng(seed)
    arms = arms or {"control": 0.30, "treatment": 0.36}
    names = list(arms)
    w = np.array([(weights or {}).get(a, 1.0) for a in names], dtype=float)
    log = EventLog()
    for u in range(units):
        arm = names[rng.choice(len(names), p=w / w.sum())]
        unit = f"user-{seed}-{u}"
        first_day = int(rng.integers(0, days))
        for _ in range(int(rng.integers(1, 7))):
            day = int(rng.integers(first_day, days))
            ts = start + timedelta(days=day, seconds=int(rng.integers(0, 86_000)))
            results = 0 if rng.random() < zero_results else 10
            imp = Impression(_id(rng), ts, experiment, arm, unit, True, "q", [f"d{i}" for i in range(results)],
                             [1.0 - i / 20 for i in range(results)], float(rng.gamma(4, 5)), f"enc-{arm}",
                             f"idx-{arm}")
            log.impressions.append(imp)
            if noise and rng.random() < 0.05:
                log.duplicates.append(imp)
            for pos in range(1, results + 1):
                if rng.random() >= arms[arm] / pos:
                    continue
                for _ in range(1 + int(rng.random() < 0.2)):  # sometimes the same result is clicked twice
                    click = Feedback(_id(rng), imp.impression_id, ts + timedelta(seconds=5), experiment, arm, unit,
                                     "click", f"d{pos - 1}", pos, 1.0)
                    log.feedback.append(click)
                    if noise and rng.random() < 0.05:
                        log.duplicates.append(click)
                log.feedback.append(Feedback(_id(rng), imp.impression_id, ts + timedelta(seconds=60), experiment,
                                             arm, unit, "dwell", f"d{pos - 1}", pos, float(rng.exponential(40))))
                if rng.random() < 0.1:
                    log.feedback.append(Feedback(_id(rng), imp.impression_id, ts + timedelta(seconds=90),
                                                 experiment, arm, unit, "conversion", f"d{pos - 1}", pos, 9.5))
                if noise and rng.random() < 0.05:  # a replayed dwell or conversion must count once
                    log.duplicates.append(log.feedback[-1])
    if noise:
        stray = log.impressions[0]
        outside = [
            Impression(_id(rng), stray.ts, experiment, names[0], "not-enrolled", False, "q", ["d0"], [1.0], 5.0,
                       "e", "i"),
            Impression(_id(rng), start - timedelta(days=1), experiment, names[0], "too-early", True, "q", ["d0"],
                       [1.0], 5.0, "e", "i"),
            Impression(_id(rng), stray.ts, "other-experiment", names[0], stray.unit_id, True, "q", ["d0"], [1.0],
                       5.0, "e", "i"),
        ]
        log.impressions += outside
        log.feedback.append(Feedback(_id(rng), "no-such-impression", stray.ts, experiment, names[0],
                                     stray.unit_id, "click", "d0", 1, 1.0))
        log.feedback += [Feedback(_id(rng), imp.impression_id, imp.ts, experiment, imp.arm, imp.unit_id, "click",
                                  "d0", 1, 1.0) for imp in outside]
    return log


def reference(log: EventLog, experiment: str, start: datetime, end: datetime, dwell: float = 30.0) -> dict:
    """{metric: {arm: tuple of sums}} in RatioStatistic / SampleMean field order, plus latency p95 and units."""
    imps = {i.impression_id: i for i in log.impressions
            if i.experiment == experiment and i.enrolled and start <= i.ts < end}
    feedback = {f.event_id: f for f in log.feedback if f.experiment == experiment}.values()
    per_imp = {k: {"clicks": set(), "first": 0, "dwell": 0.0, "conv": 0} for k in imps}
    for f in feedback:
        if f.impression_id not in per_imp:
            continue
        s = per_imp[f.impression_id]
        if f.type == "click":
            s["clicks"].add(f.doc_id)
            s["first"] = f.position if not s["first"] else min(s["first"], f.position)
        elif f.type == "dwell":
            s["dwell"] = max(s["dwell"], f.value)
        else:
            s["conv"] += 1
    units: dict[tuple, dict] = {}
    for k, imp in imps.items():
        s, u = per_imp[k], units.setdefault((imp.arm, imp.unit_id), dict.fromkeys(
            ("searches", "clicks", "clicked", "rr", "dwell_ok", "conversions", "zero_results"), 0.0))
        u["searches"] += 1
        u["clicks"] += len(s["clicks"])
        u["clicked"] += bool(s["clicks"])
        u["rr"] += 1.0 / s["first"] if s["first"] else 0.0
        u["dwell_ok"] += s["dwell"] >= dwell
        u["conversions"] += s["conv"]
        u["zero_results"] += len(imp.doc_ids) == 0
    ratio = {"ctr": ("clicks", "searches"), "click_share": ("clicked", "searches"), "mrr": ("rr", "searches"),
             "dwell_success": ("dwell_ok", "searches"), "zero_result_rate": ("zero_results", "searches")}
    out: dict = {name: {} for name in [*ratio, "abandonment", "clicks_per_search", "conversions"]}
    arms = sorted({arm for arm, _ in units})
    for arm in arms:
        rows = [u for (a, _), u in units.items() if a == arm]
        n = len(rows)

        def col(name):
            return np.array([r[name] for r in rows], dtype=float)

        def ratio_sums(m, d):
            return (n, m.sum(), (m * m).sum(), d.sum(), (d * d).sum(), (m * d).sum())

        for name, (m, d) in ratio.items():
            out[name][arm] = ratio_sums(col(m), col(d))
        out["abandonment"][arm] = ratio_sums(col("searches") - col("clicked"), col("searches"))
        x = col("clicks") / col("searches")
        out["clicks_per_search"][arm] = (n, x.sum(), (x * x).sum())
        c = col("conversions")
        out["conversions"][arm] = (n, c.sum(), (c * c).sum())
    lat = {arm: np.array([i.latency_ms for i in imps.values() if i.arm == arm], dtype=np.float64) for arm in arms}
    return {"metrics": out, "units": {arm: sum(1 for a, _ in units if a == arm) for arm in arms},
            "impressions": {arm: sum(1 for i in imps.values() if i.arm == arm) for arm in arms},
            "latency_p95": {arm: lat[arm] for arm in arms}}


def experiment_config(name: str = "exp", arms=("control", "treatment"), *, start: datetime = START,
                      days: int = 3, primary: str = "ctr", secondary=("click_share", "mrr"), sequential=True,
                      weights=None, **extra) -> dict:
    """The plain YAML data of an experiment over the generated log (parse with experiments.schema)."""
    data = {
        "name": name, "description": "Synthetic experiment for tests.", "owner": "tests", "layer": "retrieval",
        "unit": "user", "salt": f"{name}-salt", "status": "stopped", "start": start.isoformat(),
        "end": (start + timedelta(days=days)).isoformat(), "allocation": 1.0, "control": arms[0],
        "arms": [{"name": a, "weight": (weights or {}).get(a, 50), "encoder": f"enc/{a}", "index": f"idx/{a}"}
                 for a in arms],
        "metrics": {"primary": primary, "secondary": list(secondary),
                    "guardrails": [{"metric": "latency_p95", "max_relative_increase": 0.2},
                                   {"metric": "zero_result_rate", "max_absolute_increase": 0.01}]},
        "design": {"alpha": 0.05, "power": 0.8, "mde": 0.02, "sequential": sequential},
    }
    data.update(extra)
    return data
