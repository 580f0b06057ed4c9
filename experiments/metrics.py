"""The online metrics: what each one means, and how the event log becomes per-arm sufficient statistics.

Every metric is computed per randomization unit (a user or a session) in ClickHouse SQL, then summed per arm
into the engine's frozen types (experiments/stats/statistics.py), so a week of traffic leaves the database
as a handful of numbers per arm:

    kind "ratio": per-unit numerator m and denominator d -> RatioStatistic (delta method; e.g. CTR = clicks /
                  impressions: a unit's impressions are not independent, so the unit, not the search, is n)
    kind "mean":  per-unit value x                         -> SampleMean
    kind "quantile": a per-arm quantile of search latency (a guardrail; no unit-level variance, no interval)

An impression is one served result list (one search, one row of `impressions`). Built-in metrics:

    ctr                clicks / impressions (a click = a distinct clicked document of an impression)
    click_share        impressions with at least one click / impressions
    clicks_per_search  per-unit mean of (the unit's clicks / its impressions): every user weighs the same
    mrr                reciprocal rank of the best-ranked clicked result (0 without a click) / impressions
    abandonment        impressions without a click / impressions (lower is better)
    dwell_success      impressions with a dwell >= the dwell threshold (default 30 s) / impressions
    conversions        conversion events per unit
    zero_result_rate   impressions that returned no result / impressions (lower is better)
    latency_p95        95th percentile of the gateway's search latency per arm, ms (lower is better)

Custom metrics (experiments/custom_metrics.py) are ratios or per-unit means of filtered event counts or sums.

Only enrolled impressions inside the experiment's [start, end) window count; feedback counts when it belongs
to one of them (joined by impression_id, so a forged or stray feedback event cannot inflate a metric).
Duplicates from replays never count twice: impressions are read with FINAL (as the `*_unique` views of
gateway/eventlog/tables.py do; naming the table lets ClickHouse read only the sizes of `doc_ids`), and feedback is
aggregated per impression by distinct ids (distinct clicked documents, distinct conversion event ids, the
maximum dwell), which a replayed copy cannot change, so the feedback table needs no FINAL.
The SQL itself is in experiments/metrics_sql.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from experiments.stats.statistics import RatioStatistic, SampleMean

DEFAULT_DWELL_THRESHOLD_S = 30.0
MAX_LOOKS = 120  # daily looks in the cumulative series; a longer experiment is sampled evenly
# Latency quantiles read per arm, so the p95 guardrail gets a distribution-free interval (order statistics)
LATENCY_GRID = tuple(round(0.80 + 0.005 * i, 3) for i in range(40))   # 0.800 .. 0.995


@dataclass(frozen=True)
class MetricDef:
    """One metric as SQL over the per-unit columns of experiments/metrics_sql.py (UNIT_COLUMNS + custom)."""

    name: str
    label: str
    kind: str                   # ratio | mean | quantile
    numerator: str = ""         # per-unit SQL expression (the value itself for kind "mean")
    denominator: str = ""       # per-unit SQL expression, ratio only
    higher_is_better: bool = True
    unit: str = ""              # how to print a value: "%" for rates, "ms", or "" for plain numbers
    description: str = ""
    columns: tuple[str, ...] = ()  # per-unit columns the expressions use (for the cumulative series)
    custom: object | None = field(default=None, compare=False)  # the CustomMetric it came from

    def to_dict(self) -> dict:
        return {"name": self.name, "label": self.label, "kind": self.kind, "unit": self.unit,
                "higher_is_better": self.higher_is_better, "description": self.description}


BUILTIN_METRICS: dict[str, MetricDef] = {m.name: m for m in (
    MetricDef("ctr", "CTR (clicks / impressions)", "ratio", "clicks", "searches", unit="%",
              description="Distinct clicked results per impression.", columns=("clicks", "searches")),
    MetricDef("click_share", "Searches with a click", "ratio", "clicked", "searches", unit="%",
              description="Share of impressions with at least one click.", columns=("clicked", "searches")),
    MetricDef("clicks_per_search", "Clicks per search (per user)", "mean", "clicks / searches",
              description="The unit's clicks per impression, averaged over units.",
              columns=("clicks", "searches")),
    MetricDef("mrr", "Reciprocal rank of first click", "ratio", "rr", "searches",
              description="1 / position of the best-ranked click, 0 without a click, per impression.",
              columns=("rr", "searches")),
    MetricDef("abandonment", "Abandonment (no click)", "ratio", "searches - clicked", "searches",
              higher_is_better=False, unit="%", description="Share of impressions without any click.",
              columns=("clicked", "searches")),
    MetricDef("dwell_success", "Dwell success", "ratio", "dwell_ok", "searches", unit="%",
              description="Share of impressions with a dwell at or above the threshold.",
              columns=("dwell_ok", "searches")),
    MetricDef("conversions", "Conversions per unit", "mean", "conversions",
              description="Conversion events per unit.", columns=("conversions",)),
    MetricDef("zero_result_rate", "Zero-result rate", "ratio", "zero_results", "searches",
              higher_is_better=False, unit="%", description="Share of impressions that returned nothing.",
              columns=("zero_results", "searches")),
    MetricDef("latency_p95", "Latency p95", "quantile", higher_is_better=False, unit="ms",
              description="95th percentile of search latency (ms) per arm."),
)}


@dataclass(frozen=True)
class ArmSummary:
    """Traffic of one arm (analysed units and impressions), what it served, and its latency quantile."""

    arm: str
    units: int
    impressions: int
    latency_p95: float | None
    encoder_checksums: tuple[str, ...]
    index_checksums: tuple[str, ...]
    # (probability, latency ms) on LATENCY_GRID: what the latency guardrail's interval is read from
    latency_quantiles: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class CumulativePoint:
    day: date
    stats: dict[str, RatioStatistic | SampleMean]   # arm -> the metric's sums over units seen up to `day`
    covariate: dict | None = None                   # arm -> stats.cuped.CovariateSums up to `day` (design.cuped)


@dataclass(frozen=True)
class ExperimentData:
    """Everything the report needs from the event log, in one object (computed by `collect`)."""

    experiment: str
    window: tuple[datetime | None, datetime]
    metrics: dict[str, MetricDef]
    stats: dict[str, dict[str, RatioStatistic | SampleMean]]   # metric -> arm -> sums
    arms: dict[str, ArmSummary]                                 # every arm that has impressions
    daily: list[dict]                                           # {"day", "arm", "units", "impressions"}
    cumulative_metric: str | None = None
    cumulative: list[CumulativePoint] = field(default_factory=list)
    # CUPED (design.cuped): the pre-period and, per arm, the cumulative metric's sums with its covariate
    pre_window: tuple[datetime, datetime] | None = None
    covariate: dict | None = None                               # arm -> stats.cuped.CovariateSums

    @property
    def total_impressions(self) -> int:
        return sum(a.impressions for a in self.arms.values())


def resolve_metrics(names, custom: dict[str, MetricDef] | None = None) -> tuple[dict[str, MetricDef], list[str]]:
    """The definitions of `names` (built-ins first, then custom), and the names nobody defines."""
    known = dict(BUILTIN_METRICS) | dict(custom or {})
    found, unknown = {}, []
    for name in names:
        if name in known:
            found[name] = known[name]
        elif name not in unknown:
            unknown.append(name)
    return found, unknown


def look_days(first: date, last: date) -> list[date]:
    """Daily looks from the first to the last day with data; at most MAX_LOOKS, always ending on `last`."""
    days = (last - first).days + 1
    step = max(1, -(-days // MAX_LOOKS))
    looks = [first + timedelta(days=i) for i in range(days - 1, -1, -step)]
    return sorted(looks)


def analysis_window(start: datetime | None, end: datetime | None, now: datetime | None = None
                    ) -> tuple[datetime | None, datetime]:
    """[start, end): an experiment still running is analysed up to now."""
    now = now or datetime.now(timezone.utc)
    stop = min(end, now) if end is not None else now
    return start, stop
