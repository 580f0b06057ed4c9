"""The JSON input of `abgate stats`: per-arm sufficient statistics for any warehouse's aggregates.

Parsing checks the shape and types and names the offending place as a JSON path ($.metrics.ctr.arms.b.n);
sums that are well-typed but impossible (sum_squares < sum^2/n) are not rejected here: they come back as
an `invalid_statistic` result for that metric, like any other data problem. Format: docs/statistics.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from experiments.stats import correction
from experiments.stats.analysis import KINDS, MetricSpec, AnalysisSettings

FIELDS = {
    "mean": ("n", "sum", "sum_squares"),
    "proportion": ("n", "successes"),
    "ratio": ("n", "m_sum", "m_sum_squares", "d_sum", "d_sum_squares", "md_sum"),
    "cuped": ("n", "y_sum", "y_sum_squares", "x_sum", "x_sum_squares", "xy_sum"),
}
SETTINGS = {"alpha": float, "sequential": bool, "tuning": float, "correction": str, "power": float,
            "srm_threshold": float}
TOP_LEVEL = {"format", "control", "weights", "units", "settings", "metrics"}
METRIC_KEYS = {"kind", "relative", "higher_is_better", "arms"}


class SumsFormatError(ValueError):
    """A problem in the document, with the JSON path where it is."""

    def __init__(self, path: str, message: str) -> None:
        self.path, self.message = path, message
        super().__init__(f"{path}: {message}")


@dataclass(frozen=True)
class SumsDocument:
    control: str
    metrics: dict[str, dict[str, object]]
    specs: dict[str, MetricSpec]
    settings: AnalysisSettings
    units: dict[str, int] | None = None
    weights: dict[str, float] | None = None


def _json_type(value) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null", int: "number",
             float: "number"}
    return names.get(type(value), type(value).__name__)


def _object(value, path: str) -> dict:
    if not isinstance(value, dict):
        raise SumsFormatError(path, f"expected a JSON object, found {_json_type(value)}.")
    return value


def _unknown(obj: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise SumsFormatError(f"{path}.{extra[0]}", f"unknown key; allowed keys are {sorted(allowed)}.")


def _show(value) -> str:
    """A JSON value as the user wrote it, cut short: a huge object or number must not flood the terminal."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**60:
        return f"an integer of {len(str(abs(value)))} digits"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value, path: str, *, whole: bool = False, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SumsFormatError(path, f"expected a number, found {_json_type(value)} {_show(value)}.")
    try:
        as_float = float(value)
    except OverflowError:     # a JSON integer beyond float range
        as_float = math.inf
    if not math.isfinite(as_float):
        raise SumsFormatError(path, f"expected a finite number within float range, found {_show(value)}.")
    value = as_float if isinstance(value, float) else value
    if whole and (value != int(value) or value < 0):
        raise SumsFormatError(path, f"expected a whole number >= 0, found {_show(value)}.")
    if positive and value <= 0:
        raise SumsFormatError(path, f"expected a positive number, found {_show(value)}.")
    return int(value) if whole else as_float


def _statistic(kind: str, value, path: str):
    obj = _object(value, path)
    names = FIELDS[kind]
    missing = [name for name in names if name not in obj]
    if missing:
        raise SumsFormatError(f"{path}.{missing[0]}", f"missing; a {kind} metric needs {list(names)} per arm.")
    _unknown(obj, set(names), path)
    values = [_number(obj[name], f"{path}.{name}", whole=name == "n") for name in names]
    return KINDS[kind](*values)


def _choice(value, choices, path: str) -> str:
    # isinstance first: a list or an object is unhashable, and `in` on a set would raise TypeError
    if not isinstance(value, str) or value not in choices:
        raise SumsFormatError(path, f"expected one of {sorted(choices)}, found {_show(value)}.")
    return value


def _settings(value, path: str) -> AnalysisSettings:
    obj = _object(value, path)
    _unknown(obj, set(SETTINGS), path)
    out = {}
    for key, kind in SETTINGS.items():
        if key not in obj:
            continue
        item = obj[key]
        if kind is bool:
            if not isinstance(item, bool):
                raise SumsFormatError(f"{path}.{key}", f"expected true or false, found {_show(item)}.")
        elif kind is str:
            item = _choice(item, correction.METHODS, f"{path}.{key}")
        else:
            item = _number(item, f"{path}.{key}", positive=True)
            if key == "tuning" and item < 1:
                raise SumsFormatError(f"{path}.{key}", f"expected the planned total units (>= 1), found {item!r}.")
            if key != "tuning" and not item < 1:
                raise SumsFormatError(f"{path}.{key}", f"expected a number between 0 and 1, found {item!r}.")
        out[key] = item
    alpha = out.get("alpha", AnalysisSettings.alpha)
    if not alpha < out.get("power", AnalysisSettings.power):
        raise SumsFormatError(f"{path}.power", f"expected a power above alpha ({alpha:g}) and below 1, found "
                                               f"{out.get('power', AnalysisSettings.power)!r}.")
    return AnalysisSettings(**out)


def _per_arm(value, path: str, *, whole: bool) -> dict:
    obj = _object(value, path)
    if not obj:
        raise SumsFormatError(path, "expected at least one arm.")
    return {arm: _number(v, f"{path}.{arm}", whole=whole, positive=not whole) for arm, v in obj.items()}


def parse_sums(document) -> SumsDocument:
    """Build the analysis inputs from a decoded JSON document, or raise SumsFormatError."""
    root = _object(document, "$")
    _unknown(root, TOP_LEVEL, "$")
    if "format" in root and (isinstance(root["format"], bool) or root["format"] != 1):
        raise SumsFormatError("$.format", f"only format 1 is understood, found {_show(root['format'])}.")
    control = root.get("control")
    if not isinstance(control, str) or not control:
        raise SumsFormatError("$.control", "expected the control arm's name as a non-empty string.")
    settings = _settings(root.get("settings", {}), "$.settings")
    weights = _per_arm(root["weights"], "$.weights", whole=False) if "weights" in root else None
    units = _per_arm(root["units"], "$.units", whole=True) if "units" in root else None
    if (weights is None) != (units is None):
        given = "$.weights" if units is None else "$.units"
        raise SumsFormatError(given, "the SRM check needs both 'units' (assigned per arm) and 'weights' (planned).")
    metrics_obj = _object(root.get("metrics"), "$.metrics") if "metrics" in root else {}
    if not metrics_obj:
        raise SumsFormatError("$.metrics", "expected at least one metric.")
    metrics, specs = {}, {}
    for name, raw in metrics_obj.items():
        path = f"$.metrics.{name}"
        obj = _object(raw, path)
        _unknown(obj, METRIC_KEYS, path)
        kind = _choice(obj.get("kind"), FIELDS, f"{path}.kind")
        flags = {}
        for flag in ("relative", "higher_is_better"):
            if flag in obj:
                if not isinstance(obj[flag], bool):
                    raise SumsFormatError(f"{path}.{flag}", f"expected true or false, found {_show(obj[flag])}.")
                flags[flag] = obj[flag]
        arms = _object(obj.get("arms"), f"{path}.arms")
        metrics[name] = {arm: _statistic(kind, stat, f"{path}.arms.{arm}") for arm, stat in arms.items()}
        specs[name] = MetricSpec(name, kind, **flags)
    return SumsDocument(control=control, metrics=metrics, specs=specs, settings=settings, units=units,
                        weights=weights)
