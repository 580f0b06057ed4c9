"""Custom metrics declared in YAML beside the built-ins (experiments/metrics.py).

A custom metric is a numerator over a denominator, each a count or sum of filtered events, computed per unit:

    custom_metrics:
      - name: top3_ctr
        label: Clicks in the top 3 per search
        numerator: {event: click, filters: [{field: position, op: "<=", value: 3}]}
        denominator: {event: impression}          # leave out (or `units`) for a per-unit mean
        higher_is_better: true
      - name: conversion_value
        numerator: {event: conversion, aggregate: sum, cap: 500}   # sum of the event's value, each capped

event: impression | click | dwell | conversion. aggregate: count (default) | sum (of `value` for feedback,
of `latency_ms` for impressions). `cap: NUMBER` (aggregate sum only, positive): each event's value above it
counts as the cap, so one 1e9 conversion (a bot, a currency bug) cannot decide a per-unit mean. Filters are ANDed; fields are whitelisted per event and values are sent as
query parameters, so YAML can never inject SQL:

    feedback:   position, value, doc_id
    impression: latency_ms, results (number of results returned), top_score, query

ops: = != < <= > >= in not_in. With a denominator it is a ratio metric (delta method); without, a mean.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from experiments.metrics import BUILTIN_METRICS, MetricDef
from experiments.problems import Problem

EVENTS = ("impression", "click", "dwell", "conversion")
FEEDBACK_FIELDS = {"position": "position", "value": "value", "doc_id": "doc_id"}
IMPRESSION_FIELDS = {"latency_ms": "latency_ms", "results": "doc_ids.size0",
                     "top_score": "if(length(scores) > 0, scores[1], 0)", "query": "query"}
STRING_FIELDS = {"doc_id", "query"}
OPS = {"=": "=", "==": "=", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "in": "IN", "not_in": "NOT IN"}
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class EventCount:
    event: str                       # impression | click | dwell | conversion
    aggregate: str = "count"         # count | sum
    filters: tuple[Filter, ...] = ()
    cap: float | None = None         # sum only: each event's value counts as at most this

    @property
    def source(self) -> str:
        return "impressions" if self.event == "impression" else "feedback"


@dataclass(frozen=True)
class CustomMetric:
    name: str
    label: str
    numerator: EventCount
    denominator: EventCount | None
    higher_is_better: bool = True

    def definition(self, index: int) -> MetricDef:
        """The MetricDef whose per-unit columns metrics_sql names c{index}_num / c{index}_den."""
        num, den = f"c{index}_num", f"c{index}_den"
        kind = "ratio" if self.denominator else "mean"
        return MetricDef(self.name, self.label, kind, num, den if self.denominator else "",
                         self.higher_is_better, description="custom metric from YAML",
                         columns=(num, den) if self.denominator else (num,), custom=self)


def _names(keys) -> str:
    return ", ".join(sorted(map(str, keys)))


def _parse_event(data: Any, path: tuple, problems: list[Problem]) -> EventCount | None:
    if data == "impressions":
        data = {"event": "impression"}
    if not isinstance(data, dict):
        problems.append(Problem(path, "must be a mapping such as {event: click, filters: [...]}"))
        return None
    known = {"event", "aggregate", "filters", "cap"}
    for key in sorted(set(data) - known, key=str):
        problems.append(Problem(path + (str(key),), f"is not a known field: use {_names(known)}"))
    event = data.get("event")
    if not isinstance(event, str) or event not in EVENTS:
        problems.append(Problem(path + ("event",), f"is {_show(event)}, it must be one of: {', '.join(EVENTS)}"))
        return None
    aggregate = data.get("aggregate", "count")
    if aggregate not in ("count", "sum"):
        problems.append(Problem(path + ("aggregate",), f"is {_show(aggregate)}, it must be count or sum"))
    cap = data.get("cap")
    if cap is not None:
        if aggregate != "sum":
            problems.append(Problem(path + ("cap",), "caps the values of a sum: add `aggregate: sum`, or remove "
                                    "cap (a count has no values to cap)"))
            cap = None
        elif isinstance(cap, bool) or not isinstance(cap, (int, float)) or not (math.isfinite(cap) and cap > 0):
            problems.append(Problem(path + ("cap",), f"is {_show(cap)}, it must be a positive number: the largest "
                                    "value one event may count for"))
            cap = None
    fields = IMPRESSION_FIELDS if event == "impression" else FEEDBACK_FIELDS
    filters = []
    raw = data.get("filters") or []
    if not isinstance(raw, list):
        problems.append(Problem(path + ("filters",), "must be a list of {field, op, value}"))
        raw = []
    for i, item in enumerate(raw):
        where = path + ("filters", i)
        if not isinstance(item, dict) or set(item) != {"field", "op", "value"}:
            extra = ", ".join(_show(str(k)) for k in sorted(set(item) - {"field", "op", "value"}, key=str)) \
                if isinstance(item, dict) else ""
            problems.append(Problem(where, "must be a mapping with exactly field, op and value"
                                    + (f" (remove {extra})" if extra else "")))
            continue
        # A list or mapping here is unhashable: test the type before looking it up.
        if not isinstance(item["field"], str) or item["field"] not in fields:
            problems.append(Problem(where + ("field",), f"{_show(item['field'])} cannot filter {event} events: "
                                    f"use one of {', '.join(fields)}"))
            continue
        if not isinstance(item["op"], str) or item["op"] not in OPS:
            problems.append(Problem(where + ("op",), f"{_show(item['op'])} is not an operator: use one of "
                                    f"{', '.join(OPS)}"))
            continue
        value, many = item["value"], OPS[item["op"]] in ("IN", "NOT IN")
        values = value if many else [value]
        want = str if item["field"] in STRING_FIELDS else (int, float)
        if (many and not isinstance(value, list)) or not values or not all(
                isinstance(v, want) and not isinstance(v, bool)
                and (isinstance(v, str) or math.isfinite(v)) for v in values):
            kind = "text" if want is str else "finite numbers"
            problems.append(Problem(where + ("value",), f"must be {'a list of ' if many else ''}{kind} "
                                    f"for {item['field']}"))
            continue
        filters.append(Filter(item["field"], OPS[item["op"]], value))
    return EventCount(event, aggregate if aggregate in ("count", "sum") else "count", tuple(filters),
                      float(cap) if cap is not None else None)


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


def parse_custom_metrics(data: Any, path: tuple = ("custom_metrics",)) -> tuple[list[CustomMetric], list[Problem]]:
    """Custom metrics from the plain YAML data, with every problem located by its field path."""
    problems: list[Problem] = []
    if data is None:
        return [], problems
    if not isinstance(data, list):
        return [], [Problem(path, "must be a list of metrics, each with name and numerator")]
    out: list[CustomMetric] = []
    for i, item in enumerate(data):
        where = path + (i,)
        if not isinstance(item, dict):
            problems.append(Problem(where, "must be a mapping with name, numerator and optionally denominator"))
            continue
        before = len(problems)
        known = {"name", "label", "numerator", "denominator", "higher_is_better"}
        for key in sorted(set(item) - known, key=str):
            problems.append(Problem(where + (str(key),), f"is not a known field: use {_names(known)}"
                                    + (" (cap goes inside numerator, beside aggregate: sum)" if key == "cap" else "")))
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(Problem(where + ("name",), "must be a metric name in lower_snake_case"))
        elif name in BUILTIN_METRICS or any(m.name == name for m in out):
            problems.append(Problem(where + ("name",), f"{name!r} is already defined: choose another name"))
        if "numerator" not in item:
            problems.append(Problem(where + ("numerator",), "is required: say which events to count"))
            continue
        numerator = _parse_event(item["numerator"], where + ("numerator",), problems)
        raw_den = item.get("denominator")
        denominator = None if raw_den is None or raw_den == "units" else _parse_event(raw_den, where + ("denominator",),
                                                                          problems)
        better = item.get("higher_is_better", True)
        if not isinstance(better, bool):
            problems.append(Problem(where + ("higher_is_better",), "must be true or false"))
        label = item.get("label")
        if label is not None and not isinstance(label, str):
            problems.append(Problem(where + ("label",), "must be text, the metric's name in reports"))
        if len(problems) == before and numerator is not None:
            out.append(CustomMetric(name, str(item.get("label") or name), numerator, denominator, better))
    return out, problems


def definitions(custom: list[CustomMetric]) -> dict[str, MetricDef]:
    return {m.name: m.definition(i) for i, m in enumerate(custom)}
