"""Types for one experiment YAML file, and their validation.

`parse_experiment(data)` turns the plain data of one YAML document into a frozen `Experiment`, or into a list
of `Problem`s, each naming the field (as a path of keys and list indexes) and saying what to do. It never
stops at the first problem: `abgate experiments validate` reports every one. The loader (experiments/loader.py)
turns the paths into file:line; this module knows nothing about files.

The shape (one file per experiment) is the one in docs/architecture.md, plus two optional fields:
- `layer_buckets: [start, end]` — the slice of the layer's 10,000 buckets the experiment may use (default the
  whole layer). Running experiments of one layer must use disjoint slices; see gateway/assignment.py.
- per arm `dimensions` (Matryoshka truncation) and `score_threshold` (results below it are dropped).

A typo must never switch a check off silently, so every mapping refuses keys it does not know, and every
metric named under `metrics:` must be a built-in (experiments/metrics.py) or one of the file's custom_metrics.
`metrics.guardrails_policy` (block | warn, default block) says whether a failed guardrail blocks the verdict
or only warns; experiments/report.py reads it as `experiment.metrics.guardrails_policy`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from experiments.custom_metrics import parse_custom_metrics
from experiments.metrics import BUILTIN_METRICS
from experiments.problems import Path, Problem
from experiments.yaml_reader import YEARS, Reader, show_value, unknown_field  # noqa: F401 (re-exported)

BUCKETS = 10_000
UNITS = ("user", "session")
STATUSES = ("draft", "running", "stopped")
MAX_TOP_K = 100
GUARDRAIL_POLICIES = ("block", "warn")
DESIGNS = ("ab", "interleaving", "shadow")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_METRIC = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    encoder: str
    index: str
    top_k: int = 10
    dimensions: int | None = None
    score_threshold: float | None = None


@dataclass(frozen=True)
class Guardrail:
    metric: str
    max_relative_increase: float | None = None
    max_absolute_increase: float | None = None


@dataclass(frozen=True)
class Metrics:
    primary: str
    secondary: tuple[str, ...] = ()
    guardrails: tuple[Guardrail, ...] = ()
    guardrails_policy: str = "block"  # block: a failed guardrail stops a ship verdict; warn: it is reported only


@dataclass(frozen=True)
class Design:
    alpha: float = 0.05
    power: float = 0.8
    mde: float | None = None
    sample_size: int | None = None
    sequential: bool = False
    cuped_pre_days: int | None = None  # `cuped: {pre_days: N}`: pre-period covariate (docs/statistics.md)
    type: str = "ab"                   # ab | interleaving | shadow (docs/interleaving.md)


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    owner: str
    layer: str
    unit: str
    salt: str
    status: str
    start: datetime | None
    end: datetime | None
    allocation: float
    control: str
    arms: tuple[Arm, ...]
    metrics: Metrics
    design: Design
    layer_buckets: tuple[int, int] = (0, BUCKETS)
    source: str | None = field(default=None, compare=False)  # the file it came from, for messages
    custom_metrics: tuple = ()  # experiments.custom_metrics.CustomMetric, defined in the YAML beside built-ins
    shadow_sample: float | None = None  # design.type shadow: share of requests the candidate also answers

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise KeyError(name)

    @property
    def control_arm(self) -> Arm:
        return self.arm(self.control)

    def serving_status(self, now: datetime) -> str:
        """draft | running | stopped, with the start/end window applied: before start -> draft, after end -> stopped."""
        if self.status == "running":
            if self.start is not None and now < self.start:
                return "draft"
            if self.end is not None and now >= self.end:
                return "stopped"
        return self.status


def _parse_arm(data: Any, path: Path, problems: list[Problem]) -> Arm | None:
    r = Reader(data, path, problems)
    before = len(problems)
    r.unknown({"name", "weight", "encoder", "index", "top_k", "dimensions", "score_threshold"})
    name = r.text("name", pattern=_NAME)
    weight = r.number("weight", 0, 1e6, lo_open=True)
    encoder = r.text("encoder", what="the path of an encoder folder (abgate export-model)")
    index = r.text("index", what="the path of an index folder (abgate build-index)")
    top_k = r.get("top_k", int, required=False, default=10)
    if isinstance(top_k, int) and not 1 <= top_k <= MAX_TOP_K:
        r.fail(("top_k",), f"is {top_k}, it must be between 1 and {MAX_TOP_K}")
    dimensions = r.get("dimensions", int, required=False)
    if dimensions is not None and dimensions < 1:
        r.fail(("dimensions",), "must be a positive number of Matryoshka dimensions, or left out")
    threshold = r.number("score_threshold", -1.0, 1.0, required=False)
    if len(problems) > before:
        return None
    return Arm(name, weight, encoder, index, top_k, dimensions, threshold)


def _parse_metrics(data: Any, path: Path, problems: list[Problem], custom: list[str]) -> Metrics:
    """`custom`: the names written under custom_metrics (a custom metric with its own problem still counts as
    defined here, so its uses are not reported a second time)."""
    r = Reader(data, path, problems)
    r.unknown({"primary", "secondary", "guardrails", "guardrails_policy"})

    def check(key: Path, name: str) -> None:
        if name not in BUILTIN_METRICS and name not in custom:
            r.fail(key, unknown_metric(name, custom))

    primary = r.text("primary", pattern=None, what="the name of the metric that decides, e.g. ctr")
    if primary and not _METRIC.match(primary):
        r.fail(("primary",), f"{show_value(primary)} is not a metric name: use lower_snake_case such as ctr")
    elif primary:
        check(("primary",), primary)
    secondary = r.get("secondary", list, required=False, default=[])
    for i, name in enumerate(secondary):
        if not isinstance(name, str) or not _METRIC.match(name):
            r.fail(("secondary", i), "must be a metric name in lower_snake_case such as mrr")
        else:
            check(("secondary", i), name)
    guardrails = []
    for i, item in enumerate(r.get("guardrails", list, required=False, default=[])):
        g = Reader(item, path + ("guardrails", i), problems)
        g.unknown({"metric", "max_relative_increase", "max_absolute_increase"})
        metric = g.text("metric", what="a metric name such as latency_p95")
        if metric and not _METRIC.match(metric):
            g.fail(("metric",), f"{show_value(metric)} is not a metric name: use lower_snake_case such as latency_p95")
        elif metric:
            check(("guardrails", i, "metric"), metric)
        rel = g.number("max_relative_increase", 0, 100, required=False)
        absolute = g.number("max_absolute_increase", 0, 1e9, required=False)
        if rel is None and absolute is None and isinstance(item, dict):
            g.fail((), "needs max_relative_increase or max_absolute_increase: say how much worse is too much")
        elif rel is not None and absolute is not None:
            # The report checks one margin; with both, the absolute one would be ignored without a word.
            g.fail(("max_absolute_increase",), "cannot be given with max_relative_increase: keep one margin per "
                   "guardrail, or add a second guardrail on the same metric")
        guardrails.append(Guardrail(metric, rel, absolute))
    policy = r.get("guardrails_policy", str, required=False, default="block", what="block or warn")
    if policy not in GUARDRAIL_POLICIES:
        r.fail(("guardrails_policy",), f"is {show_value(policy)}, it must be block (a failed guardrail stops a ship "
               "verdict; the default) or warn (it is only reported)")
        policy = "block"
    return Metrics(primary, tuple(s for s in secondary if isinstance(s, str)), tuple(guardrails), policy)


def unknown_metric(name: str, custom: list[str]) -> str:
    close = difflib.get_close_matches(name, [*BUILTIN_METRICS, *custom], n=1, cutoff=0.6)
    guess = f"did you mean {close[0]!r}? " if close else ""
    defined = f"; custom_metrics of this file: {', '.join(custom)}" if custom else ""
    return (f"{name!r} is not a metric: {guess}use a built-in ({', '.join(BUILTIN_METRICS)}){defined}, or define "
            "it under custom_metrics")


def _parse_design(data: Any, path: Path, problems: list[Problem]) -> Design:
    r = Reader(data, path, problems)
    r.unknown({"alpha", "power", "mde", "sample_size", "sequential", "cuped", "type"})
    kind = r.get("type", str, required=False, default="ab", what="ab, interleaving or shadow")
    if kind not in DESIGNS:
        r.fail(("type",), f"is {show_value(kind)}, it must be one of: {', '.join(DESIGNS)}")
        kind = "ab"
    alpha = r.number("alpha", 0, 0.5, required=False, default=0.05, lo_open=True)
    power = r.number("power", 0, 1, required=False, default=0.8, lo_open=True)
    mde = r.number("mde", 0, 100, required=False, lo_open=True)
    sample_size = r.get("sample_size", int, required=False)
    if sample_size is not None and sample_size < 2:
        r.fail(("sample_size",), "must be at least 2 units")
    if mde is None and sample_size is None and isinstance(data, dict):
        r.fail((), "needs mde (minimum detectable effect) or sample_size (planned units per arm)")
    sequential = r.get("sequential", bool, required=False, default=False)
    pre_days = None
    cuped = r.get("cuped", dict, required=False)
    if cuped is not None:
        c = Reader(cuped, path + ("cuped",), problems)
        c.unknown({"pre_days"})
        pre_days = c.get("pre_days", int, required=True)
        if isinstance(pre_days, int) and not 1 <= pre_days <= 365:
            c.fail(("pre_days",), f"is {pre_days}; use 1 to 365 days of pre-period before the start")
            pre_days = None
    return Design(alpha or 0.05, power or 0.8, mde, sample_size, bool(sequential),
                  pre_days if isinstance(pre_days, int) else None, kind)


def parse_experiment(data: Any, source: str | None = None) -> tuple[Experiment | None, list[Problem]]:
    problems: list[Problem] = []
    r = Reader(data, (), problems)
    r.unknown({"name", "description", "owner", "layer", "unit", "salt", "status", "start", "end", "allocation",
               "control", "arms", "metrics", "design", "layer_buckets", "custom_metrics", "shadow"})
    name = r.text("name", pattern=_NAME)
    description = r.text("description", what="one sentence saying what the experiment asks")
    owner = r.text("owner", what="the team that owns it")
    layer = r.text("layer", pattern=_NAME)
    unit = r.text("unit")
    if unit and unit not in UNITS:
        r.fail(("unit",), f"is {unit!r}, it must be one of: {', '.join(UNITS)}")
    salt = r.text("salt", what="a string that makes this experiment's hashing independent, e.g. name-2026-11")
    status = r.text("status")
    if status and status not in STATUSES:
        r.fail(("status",), f"is {status!r}, it must be one of: {', '.join(STATUSES)}")
    start, end = r.moment("start"), r.moment("end")
    if status == "running" and start is None and "start" in r.data and r.data["start"] is None:
        r.fail(("start",), "a running experiment needs a start time")
    if start and end and end <= start:
        r.fail(("end",), "must be after start")
    allocation = r.number("allocation", 0, 1, lo_open=True)
    control = r.text("control", what="the name of the control arm")
    arms: list[Arm] = []
    raw_arms = r.get("arms", list, what="a list of at least two arms")
    for i, item in enumerate(raw_arms or []):
        arm = _parse_arm(item, ("arms", i), problems)
        if arm is not None:
            if any(a.name == arm.name for a in arms):
                problems.append(Problem(("arms", i, "name"), f"arm {arm.name!r} is defined twice: rename one"))
            arms.append(arm)
    if isinstance(raw_arms, list) and len(raw_arms) < 2:
        r.fail(("arms",), "needs at least two arms: a control and a treatment")
    # Compare with the names as written, so a typo in control is reported even when an arm has other problems.
    written = [a.get("name") for a in raw_arms or [] if isinstance(a, dict) and isinstance(a.get("name"), str)]
    if control and written and control not in written:
        r.fail(("control",), f"{show_value(control)} is not one of the arms ({', '.join(map(show_value, written))}): name "
                             "the control arm")
    buckets = r.get("layer_buckets", list, required=False, default=[0, BUCKETS])
    if not (len(buckets) == 2 and all(isinstance(b, int) and not isinstance(b, bool) for b in buckets)
            and 0 <= buckets[0] < buckets[1] <= BUCKETS):
        r.fail(("layer_buckets",), f"must be [start, end] with 0 <= start < end <= {BUCKETS}")
        buckets = [0, BUCKETS]
    raw_custom = r.data.get("custom_metrics")
    custom_names = [m["name"] for m in raw_custom if isinstance(m, dict) and isinstance(m.get("name"), str)] \
        if isinstance(raw_custom, list) else []
    metrics = (_parse_metrics(r.data.get("metrics"), ("metrics",), problems, custom_names)
               if "metrics" in r.data else None)
    if metrics is None:
        r.fail(("metrics",), "is required: add `metrics:` with at least `primary:`")
    design = _parse_design(r.data.get("design"), ("design",), problems) if "design" in r.data else None
    if design is None:
        r.fail(("design",), "is required: add `design:` with mde or sample_size")
    elif design.cuped_pre_days is not None and unit == "session":
        r.fail(("design", "cuped"), "needs unit: user: a session does not exist before the experiment starts, "
               "so it has no pre-period to learn from; remove `cuped:`")
    elif design.cuped_pre_days is not None and start is None:
        r.fail(("design", "cuped"), "needs a start time: the pre-period is the pre_days before `start:`")

    shadow_sample = None
    if "shadow" in r.data:
        sh = Reader(r.data.get("shadow"), ("shadow",), problems)
        if design is not None and design.type != "shadow":
            r.fail(("shadow",), "is only for design.type: shadow; remove it or set the design's type")
        elif isinstance(r.data.get("shadow"), dict):
            sh.unknown({"sample"})
            shadow_sample = sh.number("sample", 0, 1, required=False, default=1.0, lo_open=True)
        else:
            r.fail(("shadow",), "must be a mapping such as {sample: 0.25}")
    if design is not None and design.type in ("interleaving", "shadow") and len(arms) < 2:
        r.fail(("arms",), f"a {design.type} experiment needs a control and at least one candidate arm")

    custom, custom_problems = parse_custom_metrics(raw_custom)
    problems += custom_problems
    if problems:
        return None, problems
    return Experiment(name, description, owner, layer, unit, salt, status, start, end, float(allocation), control,
                      tuple(arms), metrics, design, (buckets[0], buckets[1]), source, tuple(custom),
                      shadow_sample), []
