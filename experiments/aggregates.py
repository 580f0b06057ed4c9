"""Per-unit aggregates: a report whose cost grows with the experiment's units, not with its events.

Grain: one row per (experiment, spec, arm, unit) in `unit_aggregates` (gateway/eventlog/tables.py), holding for
each of the unit's active days the day's sums of every per-impression column the metrics use (UNIT_COLUMNS
and the custom metrics' columns of experiments/metrics_sql.py), a mergeable latency sketch, the checksums it
was served with and its last event time. The report reads these rows (about one per unit) instead of joining
every impression to its feedback; the daily looks come from the same per-day arrays, cumulated per unit, so
every look a raw-event report gives is there too. Why this grain and not (unit, day) rows or a materialized
view: docs/reports.md "Aggregates".

Exactly once. A unit's row is never incremented: it is recomputed whole, from the deduplicated events (FINAL
impressions, feedback by distinct ids: the very SQL of the raw path), whenever the unit has an event inserted
since the last refresh (`inserted_at`, set by the server at insert time). A replayed batch re-inserts rows
with new `inserted_at`, so its units are recomputed, and the recomputation collapses the copies as the raw
path does: the row comes out the same. `unit_aggregates` is a ReplacingMergeTree on `version` (the refresh's
time), read with FINAL: the newest computation of each unit wins. On a server each refresh re-reads OVERLAP
before its watermark, so an insert still in flight while the last refresh ran is not missed (overlap_for).

`spec` is a digest of what the numbers depend on beyond the events: the window, the dwell threshold and the
custom metrics' definitions. A report under another spec builds its own rows (a full build, in unit buckets,
resumable: `abgate db backfill`); rows of an older spec are never mixed in.

The latency sketch is quantilesBFloat16: exact counts of latencies rounded to 8 significant bits, so a
quantile read from it is within 0.4% of the exact one (`abgate report --exact` reads the raw events).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import partial
from datetime import datetime, timedelta, timezone

from experiments.custom_metrics import definitions
from experiments.metrics import LATENCY_GRID, ArmSummary, ExperimentData, MetricDef, analysis_window
from experiments.metrics_sql import UNIT_COLUMNS, MetricQueries, _ts, collect

OVERLAP = timedelta(minutes=1)   # re-read before the watermark: inserts that were in flight at the last refresh
ROWS_PER_BUCKET = 8_000_000      # a full build goes unit bucket by unit bucket: bounded memory, resumable
FAR_FUTURE = datetime(2200, 1, 1, tzinfo=timezone.utc)
# On a cluster the event tables are Distributed and sharded by unit, so a unit's impressions, feedback and
# aggregate row share a shard: the IN subqueries may run shard-locally (ClickHouse refuses them by default).
LOCAL_SUBQUERIES = "distributed_product_mode = 'local'"
_GRID = ", ".join(repr(p) for p in LATENCY_GRID)
_EXTRA = ("latency_ms AS i_latency", "encoder_checksum AS i_enc", "index_checksum AS i_idx", "ts AS i_ts")


@dataclass(frozen=True)
class AggregateSpec:
    """What an experiment's aggregates depend on besides the events."""

    experiment: str
    start: str | None
    end: str | None
    dwell_threshold: float
    custom: tuple[tuple[str, str], ...]   # (per-unit column, the custom metric's definition)

    @property
    def id(self) -> str:
        blob = json.dumps([self.experiment, self.start, self.end, self.dwell_threshold, self.custom])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RefreshResult:
    spec: str
    mode: str          # "build" (all units, bucket by bucket) or "incremental" (units with new events)
    units: int         # unit rows (re)computed
    seconds: float
    buckets: int = 0
    buckets_done: int = 0
    resumed_at: int = 0  # the bucket a build started from (> 0: an interrupted build resumed)
    as_of: datetime | None = None  # every event inserted before this is in the aggregates

    @property
    def complete(self) -> bool:
        return self.buckets_done >= self.buckets

    def to_dict(self) -> dict:
        return {"spec": self.spec, "mode": self.mode, "units": self.units, "seconds": round(self.seconds, 3),
                "buckets": self.buckets, "buckets_done": self.buckets_done, "resumed_at": self.resumed_at,
                "as_of": self.as_of.isoformat() if self.as_of else None}


def spec_for(experiment, metrics: dict[str, MetricDef], dwell_threshold: float) -> AggregateSpec:
    custom = tuple(sorted((f"{m.numerator}/{m.denominator}", repr(m.custom))
                          for m in metrics.values() if m.custom is not None))
    iso = (lambda t: t.isoformat() if t is not None else None)
    return AggregateSpec(experiment.name, iso(experiment.start), iso(experiment.end), float(dwell_threshold), custom)


def _queries(database: str, experiment, metrics: dict[str, MetricDef], dwell: float) -> MetricQueries:
    custom = {k: m for k, m in metrics.items() if m.custom is not None}
    return MetricQueries(database, experiment.name, (experiment.start, experiment.end or FAR_FUTURE), dwell, custom)


def insert_sql(q: MetricQueries, unit_filter: str) -> str:
    """INSERT ... SELECT recomputing the rows of the units that pass `unit_filter` (SQL over impressions)."""
    imp_where = (f"experiment = {{experiment:String}} AND enrolled {q.start_clause} "
                 f"AND ts < {{end:DateTime64(3, 'UTC')}} AND {unit_filter}")
    fb_where = "experiment = {experiment:String} AND cityHash64(impression_id) IN (SELECT imp_key FROM imp)"
    columns = q._unit_columns()
    # One GROUP BY unit: sumMap keyed by day gives the day-sorted per-day sums of every column at once (a day
    # stays because its `searches` sum is at least 1). Grouping by (unit, day) first and then by unit held a
    # latency sketch and two hash sets per (unit, day): 7.4 GB peak for a 10M-impression build in 2 buckets.
    by_day = f"sumMap(([day]{''.join(f', [toFloat64({expr})]' for _, expr in columns)}))"
    array = {n: f"tupleElement({by_day}, {j + 2})" for j, (n, _) in enumerate(columns)}
    custom = [n for n, _ in columns if n not in UNIT_COLUMNS]
    custom_sql = (f"mapFromArrays([{', '.join(repr(n) for n in custom)}], [{', '.join(array[n] for n in custom)}])"
                  if custom else "CAST(map(), 'Map(String, Array(Float64))')")
    names = ", ".join(f"d_{n}" for n in UNIT_COLUMNS)
    return (f"INSERT INTO {q.db}.unit_aggregates (experiment, spec, arm, unit_id, days, {names}, custom, latency, "
            f"encoders, indexes, last_ts, version)\n"
            f"WITH {q.searches_cte(imp_where=imp_where, fb_where=fb_where, extra=_EXTRA)}\n"
            f"SELECT {{experiment:String}}, {{spec:String}}, arm, unit_id, tupleElement({by_day}, 1), "
            f"{', '.join(array[n] for n in UNIT_COLUMNS)}, {custom_sql}, "
            f"quantilesBFloat16State({_GRID})(i_latency), groupUniqArray(i_enc), groupUniqArray(i_idx), "
            f"max(i_ts), {{version:UInt64}}\n"
            f"FROM searches GROUP BY arm, unit_id\nSETTINGS {LOCAL_SUBQUERIES}")


def _run_insert(client, q: MetricQueries, spec: str, unit_filter: str, params: dict | None = None) -> int:
    """Run one recomputation; returns its version (rows written carry it)."""
    version = time.time_ns()
    client.command(insert_sql(q, unit_filter), parameters=dict(q.params) | {"spec": spec, "version": version}
                   | (params or {}))
    return version


def _written_since(client, q: MetricQueries, spec: str, version: int) -> int:
    """Unit rows written by recomputations from `version` on (the embedded engine reports no written rows)."""
    return int(client.query(f"SELECT count() FROM {q.db}.unit_aggregates WHERE experiment = {{experiment:String}} "
                            f"AND spec = {{spec:String}} AND version >= {{version:UInt64}}",
                            parameters={"experiment": q.params["experiment"], "spec": spec,
                                        "version": version}).result_rows[0][0])


def _state(client, db: str, experiment: str, spec: str) -> tuple | None:
    rows = client.query(f"SELECT argMax(tuple(watermark, buckets, buckets_done), updated_at), count() "
                        f"FROM {db}.aggregate_state WHERE experiment = {{e:String}} AND spec = {{s:String}}",
                        parameters={"e": experiment, "s": spec}).result_rows
    return rows[0][0] if rows and rows[0][1] else None


def _save_state(client, db: str, experiment: str, spec: str, watermark: datetime, buckets: int, done: int) -> None:
    client.insert(f"{db}.aggregate_state", [[experiment, spec, watermark, buckets, done, datetime.now(timezone.utc)]],
                  column_names=["experiment", "spec", "watermark", "buckets", "buckets_done", "updated_at"])


def overlap_for(client) -> timedelta:
    """How far before the watermark a refresh re-reads. An embedded store belongs to one process whose client
    serializes every statement, so an insert is committed before a refresh starts or gets a later
    inserted_at: nothing is in flight. A server takes inserts from many processes at once."""
    return timedelta(0) if str(getattr(client, "dsn", "")).startswith("chdb:") else OVERLAP


def _server_now(client) -> datetime:
    value = client.query("SELECT now64(3, 'UTC')").result_rows[0][0]
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def refresh(client, experiment, metrics: dict[str, MetricDef], *, database: str = "abgate",
            dwell_threshold: float, buckets: int | None = None, rebuild: bool = False,
            max_buckets: int | None = None, max_lag_s: float | None = None, progress=None) -> RefreshResult:
    """Bring the experiment's aggregates up to date: a full build (resumed where an interrupted one stopped)
    when there are none under this spec, else the units with events inserted since the watermark.
    `buckets`: unit buckets of a new build (default: one per ROWS_PER_BUCKET impressions; each bucket reads
    the experiment's events once, and holds 1/buckets of them in memory); `max_buckets`: stop a build after
    that many buckets (the rest on the next call); `max_lag_s`: aggregates refreshed less than this long ago
    are read as they are (mode "current"; the gateway's refresher keeps them so: a dashboard does not pay for
    the refresh of the units that searched in the last seconds)."""
    started = time.perf_counter()
    spec = spec_for(experiment, metrics, dwell_threshold)
    q = _queries(database, experiment, metrics, dwell_threshold)
    state = None if rebuild else _state(client, database, experiment.name, spec.id)
    if state is not None and state[2] >= state[1]:
        watermark = state[0] if state[0].tzinfo else state[0].replace(tzinfo=timezone.utc)
        now = _server_now(client)
        if max_lag_s is not None and (now - watermark).total_seconds() < max_lag_s:
            return RefreshResult(spec.id, "current", 0, time.perf_counter() - started, state[1], state[1], state[1],
                                 watermark)
        params = {"since": _ts(watermark - overlap_for(client))}
        touched = (f"SELECT unit_id FROM {database}.impressions WHERE experiment = {{experiment:String}} "
                   f"AND inserted_at >= {{since:DateTime64(3, 'UTC')}} UNION DISTINCT SELECT unit_id FROM "
                   f"{database}.feedback WHERE experiment = {{experiment:String}} AND "
                   f"inserted_at >= {{since:DateTime64(3, 'UTC')}}")
        units = int(client.query(f"SELECT count() FROM ({touched}) SETTINGS {LOCAL_SUBQUERIES}",
                                 parameters=q.params | params).result_rows[0][0])
        if units:  # nothing new: no scan at all
            _run_insert(client, q, spec.id, f"unit_id IN ({touched})", params)
        _save_state(client, database, experiment.name, spec.id, now, state[1], state[1])
        return RefreshResult(spec.id, "incremental", units, time.perf_counter() - started, state[1], state[1],
                             state[1], now)
    if state is None:
        if buckets is None:
            rows = client.query(f"SELECT count() FROM {database}.impressions WHERE experiment = {{e:String}}",
                                parameters={"e": experiment.name}).result_rows[0][0]
            buckets = max(1, min(64, -(-int(rows) // ROWS_PER_BUCKET)))
        watermark, total, done = _server_now(client), buckets, 0
        _save_state(client, database, experiment.name, spec.id, watermark, total, 0)
    else:
        watermark, total, done = state[0], state[1], state[2]
    resumed_at, first = done, time.time_ns()
    stop = total if max_buckets is None else min(total, done + max_buckets)
    for bucket in range(done, stop):
        _run_insert(client, q, spec.id, f"cityHash64(unit_id) % {total} = {bucket}")
        _save_state(client, database, experiment.name, spec.id, watermark, total, bucket + 1)
        if progress is not None:
            elapsed = time.perf_counter() - started
            eta = elapsed / (bucket + 1 - resumed_at) * (stop - bucket - 1)
            print(f"abgate: aggregates of {experiment.name}: bucket {bucket + 1}/{total} "
                  f"({elapsed:.0f} s, eta {eta:.0f} s)", file=progress, flush=True)
    units = _written_since(client, q, spec.id, first)
    if stop == total:
        _merge(client, database, experiment.name)
    return RefreshResult(spec.id, "build", units, time.perf_counter() - started, total, stop, resumed_at,
                         watermark)


def _merge(client, database: str, experiment: str) -> None:
    """Merge the experiment's partition into one part: FINAL then reads it without merging (measured at 1M
    units: 1.9 s for the series query instead of 2.9 s over the four parts a build leaves). Later
    incremental parts are merged by ClickHouse in the background. On a cluster the table is Distributed
    and OPTIMIZE belongs on the shards' local tables: skipped, the background merges do it there too."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        part = client.query("SELECT cityHash64({e:String}) % 64", parameters={"e": experiment}).result_rows[0][0]
        client.command(f"OPTIMIZE TABLE {database}.unit_aggregates PARTITION {int(part)} FINAL")
    except ClickHouseError:
        pass


def refresh_experiment(client, experiment, **kwargs) -> RefreshResult:
    """`refresh` under the spec a report of `experiment` uses (its custom metrics): for the gateway's refresher,
    `abgate db backfill` and the benches, which have no report's metric set at hand."""
    return refresh(client, experiment, definitions(list(experiment.custom_metrics)), **kwargs)


def covers(client, database: str, experiment: str, spec: str, end: datetime) -> bool:
    """Whether the aggregates stop before `end`: no aggregated impression at or after it (a report whose
    window ends before the latest events, e.g. run with an earlier `now`, needs the raw events)."""
    last = client.query(f"SELECT max(last_ts), count() FROM {database}.unit_aggregates "
                        f"WHERE experiment = {{e:String}} AND spec = {{s:String}}",
                        parameters={"e": experiment, "s": spec}).result_rows[0]
    if not last[1]:
        return True
    latest = last[0] if last[0].tzinfo else last[0].replace(tzinfo=timezone.utc)
    return latest < end


def _column(name: str) -> str:
    return f"d_{name}" if name in UNIT_COLUMNS else f"custom['{name}']"


class AggregateQueries(MetricQueries):
    """MetricQueries reading `unit_aggregates` (rows of one spec) instead of the raw events; the rest of the
    series query, the CUPED pre-period (still raw: a fixed window before the start) and the Python are shared."""

    def __init__(self, *args, spec: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params["spec"] = spec

    def head_ctes(self) -> str:
        return ""

    def units_select(self, columns, needed: set, with_unit: bool) -> str:
        cums = ", ".join(f"arrayCumSum({_column(n)}) AS c_{n}" for n, _ in columns if n in needed)
        totals = ", ".join(f"arraySum({_column(n)}) AS {n}" for n, _ in columns)
        return (f"SELECT arm{', unit_id' if with_unit else ''}, days, {cums}, {totals} "
                f"FROM {self.db}.unit_aggregates FINAL WHERE experiment = {{experiment:String}} "
                f"AND spec = {{spec:String}}")

    def result_select(self, sums: list[str], joins: list[str]) -> str:
        """The once-per-unit sums (`sumIf(x, k = 1)`: final values, CUPED's fixed terms) booked on each unit's
        first day from one row per unit, and only the per-day changes through the ARRAY JOIN of one row per
        (unit, active day): reading `steps` twice costs less here than ~30 conditional sums over every
        active day (on raw events, reading `steps` twice would rescan them: MetricQueries does it in one)."""
        once = [x.startswith("sumIf(") and x.endswith(", k = 1)") for x in sums]
        daily = ", ".join(f"{'0.' if o else x} AS s{i}" for i, (x, o) in enumerate(zip(sums, once)))
        first = ", ".join(f"{'sum(' + x[6:-len(', k = 1)')] + ')' if o else '0.'} AS s{i}"
                          for i, (x, o) in enumerate(zip(sums, once)))
        totals = ", ".join(f"sum(s{i})" for i in range(len(sums)))
        return (f"SELECT day, arm, sum(a), sum(b), sum(n), {totals} FROM (\n"
                f"SELECT day, arm, count() AS a, sum(day_imps) AS b, 0 AS n, {daily}\n"
                f"FROM steps ARRAY JOIN days AS day, day_searches AS day_imps"
                f"{''.join(', ' + j for j in joins)}\nGROUP BY day, arm\nUNION ALL\n"
                f"SELECT days[1] AS day, arm, 0 AS a, 0 AS b, count() AS n, {first}\nFROM steps GROUP BY day, arm)\n"
                f"GROUP BY day, arm ORDER BY day, arm")

    def arm_summaries(self, client, traffic: dict[str, tuple[int, int]]) -> dict[str, ArmSummary]:
        p95 = LATENCY_GRID.index(0.95)
        sql = (f"SELECT arm, quantilesBFloat16Merge({_GRID})(latency), groupUniqArrayArray(encoders), "
               f"groupUniqArrayArray(indexes) FROM {self.db}.unit_aggregates FINAL "
               f"WHERE experiment = {{experiment:String}} AND spec = {{spec:String}} GROUP BY arm ORDER BY arm")
        out = {}
        for arm, grid_values, encoders, indexes in client.query(sql, parameters=self.params).result_rows:
            units, impressions = traffic.get(arm, (0, 0))
            values = [float(v) for v in grid_values]
            out[arm] = ArmSummary(arm, units, impressions, values[p95], tuple(sorted(encoders)),
                                  tuple(sorted(indexes)), tuple(zip(LATENCY_GRID, values)))
        return out


def collect_data(client, experiment, *, metrics: dict[str, MetricDef], database: str, dwell_threshold: float,
                 cumulative_metric: str | None, now: datetime | None = None, exact: bool = False,
                 max_lag_s: float | None = None, progress=None) -> tuple[ExperimentData, dict]:
    """The report's sums, from the aggregates (refreshed first) unless `exact`; and where they came from."""
    kwargs = dict(metrics=metrics, database=database, dwell_threshold=dwell_threshold,
                  cumulative_metric=cumulative_metric, now=now)
    if exact:
        return collect(client, experiment, **kwargs), {"path": "raw events", "reason": "asked for (--exact)"}
    result = refresh(client, experiment, metrics, database=database, dwell_threshold=dwell_threshold,
                     max_lag_s=max_lag_s, progress=progress)
    if not result.complete:  # cannot happen without max_buckets; a partial build must never be read
        raise RuntimeError("aggregate build stopped before its last bucket")
    end = analysis_window(experiment.start, experiment.end, now)[1]
    if not covers(client, database, experiment.name, result.spec, end):
        return collect(client, experiment, **kwargs), {
            "path": "raw events", "refresh": result.to_dict(),
            "reason": f"events at or after the analysis window's end ({end.isoformat()}) are aggregated: a "
                      "report that stops before the latest events reads the raw events"}
    data = collect(client, experiment, **kwargs, source=partial(AggregateQueries, spec=result.spec))
    return data, {"path": "aggregates", "refresh": result.to_dict()}
