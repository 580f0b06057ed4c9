"""Reading plain YAML data into typed fields, collecting every problem (with its path) instead of stopping.

`Reader` wraps one mapping of an experiment file; experiments/schema.py builds the experiment's types with it.
"""

from __future__ import annotations

import difflib
import math
import re
from datetime import date, datetime, time, timezone
from typing import Any

from experiments.problems import Path, Problem

# The event log's DateTime64 holds 1900-2299; a start outside it would reach ClickHouse as a bad parameter.
YEARS = (1970, 2299)

class Reader:
    """Reads fields out of one mapping, collecting problems instead of raising."""

    def __init__(self, data: Any, path: Path, problems: list[Problem]) -> None:
        self.path, self.problems = path, problems
        if not isinstance(data, dict):
            self.fail((), f"must be a mapping of fields, got {_kind(data)}")
            data = {}
        self.data = data

    def fail(self, key: Path, message: str) -> None:
        self.problems.append(Problem(self.path + key, message))

    def unknown(self, known: set[str]) -> None:
        for key in self.data:
            if key not in known:
                self.fail((str(key),), unknown_field(key, known))

    def get(self, key: str, kind: type | tuple[type, ...], *, required: bool = True, default: Any = None,
            what: str = "") -> Any:
        if key not in self.data or (self.data[key] is None and not required):
            if required:
                self.fail((key,), f"is required: add `{key}:`{' with ' + what if what else ''}")
            return default
        value = self.data[key]
        # YAML's bool is an int subclass: `weight: yes` must not pass as a number.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            self.fail((key,), f"must be {what or _kind_name(kind)}, got a boolean")
            return default
        if not isinstance(value, kind):
            hint = ""
            if isinstance(value, str) and float in (kind if isinstance(kind, tuple) else (kind,)):
                hint = _number_hint(value)
            self.fail((key,), f"must be {what or _kind_name(kind)}, got {_kind(value)}{hint}")
            return default
        return value

    def text(self, key: str, *, required: bool = True, pattern: re.Pattern | None = None, what: str = "") -> str:
        value = self.get(key, str, required=required, default="", what=what or "a string")
        if value and pattern is not None and not pattern.match(value):
            self.fail((key,), f"{show_value(value)} is not a valid name: use lower-case letters, digits, '-', '_' or "
                              "'.' (at most 63)")
        elif required and isinstance(self.data.get(key), str) and not value.strip():
            self.fail((key,), "must not be empty")
        return value

    def number(self, key: str, lo: float, hi: float, *, required: bool = True, default: float | None = None,
               lo_open: bool = False) -> float | None:
        value = self.get(key, (int, float), required=required, default=default, what="a number")
        if value is None or value is default:
            return value
        bound = f"({lo:g}, {hi:g}]" if lo_open else f"[{lo:g}, {hi:g}]"
        # NaN compares false with every bound, so `.nan` would pass a range check: refuse it by name.
        if isinstance(value, float) and not math.isfinite(value):
            self.fail((key,), f"is {value}, it must be a finite number in {bound}")
            return default
        if value < lo or value > hi or (lo_open and value == lo):
            self.fail((key,), f"is {show_value(value)}, it must be in {bound}")
            return default
        return float(value)

    def moment(self, key: str) -> datetime | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                self.fail((key,), f"{show_value(value)} is not a time: write it as 2026-11-01T00:00:00Z")
                return None
        if isinstance(value, date) and not isinstance(value, datetime):  # as a quoted "2026-11-01" reads
            value = datetime.combine(value, time(), tzinfo=timezone.utc)
        if not isinstance(value, datetime):
            self.fail((key,), f"must be a time such as 2026-11-01T00:00:00Z, or null; got {_kind(value)}")
            return None
        if not YEARS[0] <= value.year <= YEARS[1]:
            self.fail((key,), f"is in the year {value.year}: use a time between {YEARS[0]} and {YEARS[1]}")
            return None
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def unknown_field(key: Any, known: set[str] | tuple[str, ...]) -> str:
    """The message for a key no reader expects: the nearest known spelling, then every known field."""
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return (f"is not a known field: {guess}remove it or fix its spelling (a misspelt field would be ignored); "
            f"known fields are: {', '.join(sorted(known))}")


def show_value(value: Any, limit: int = 60) -> str:
    """A value quoted for a one-line message, cut short: a message must not carry a megabyte of input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 5] + "...'"


def _number_hint(text: str) -> str:
    try:
        float(text)
    except ValueError:
        return ""
    # YAML 1.1 reads 1e6 (no dot) as text, and PyYAML follows it.
    return f" ({show_value(text)} is text to YAML): write it with a dot and a signed exponent, such as 1.0e+6, or in full"


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing", bool: "a boolean",
            int: "an integer", float: "a number", bytes: "binary data (!!binary)", datetime: "a time",
            date: "a date", set: "a set (!!set)"}.get(type(value), type(value).__name__)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a mapping",
             list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)
