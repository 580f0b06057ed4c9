"""The ClickHouse SQL behind experiments/metrics.py.

One query computes every metric, at every daily look, from one scan of the event log:

    searches  one row per (deduplicated) enrolled impression in the window, with its feedback summed up
              (LEFT JOIN on impression_id: feedback that names no analysed impression is ignored). The join
              key is the 64-bit cityHash of the id: a third faster than the string, and two of 10M random
              128-bit ids share a 64-bit hash with probability ~3e-6, so a misattributed click is not a risk.
    units     GROUP BY arm, unit_id: the UNIT_COLUMNS below (+ c{i}_num / c{i}_den of custom metrics) summed
              over the unit's impressions, and for the charted metric, day-sorted cumulative arrays of them
    result    per (arm, day): active units and impressions, each metric's final sums over units, and what
              that day adds to the charted metric's n, sum m, sum m^2, sum d, sum d^2, sum m*d

Python sums the per-day changes: day L's running totals are exactly the sums a report run at the end of
day L would get (the units seen so far, each with its events so far). So the sequential chart costs no
second scan, and the array work is one row per (unit, active day) for one metric only.
Values are passed as query parameters; identifiers come only from code (the database name is checked).
experiments/aggregates.py subclasses MetricQueries to read per-unit aggregates instead of `searches`.
Longer than 350 lines because the series query is one piece (its CTEs, layout and CUPED join are built
together); it is split only where aggregates.py overrides it (head_ctes, units_select, arm_summaries).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from experiments.custom_metrics import FEEDBACK_FIELDS, IMPRESSION_FIELDS
from experiments.metrics import (DEFAULT_DWELL_THRESHOLD_S, LATENCY_GRID, ArmSummary, CumulativePoint, ExperimentData, MetricDef,
                                 analysis_window, look_days)
from experiments.stats.cuped import CovariateSums
from experiments.stats.statistics import RatioStatistic, SampleMean

# Per-unit columns: each is the sum over the unit's impressions of a per-impression value, computed from the
# columns of `searches` (which carry an i_ prefix, so that no alias shadows a column).
UNIT_COLUMNS = {
    "searches": "1",
    "clicks": "i_clicks",
    "clicked": "i_clicks > 0",
    "rr": "if(i_first_click > 0, 1.0 / i_first_click, 0.0)",
    "dwell_ok": "i_max_dwell >= {dwell:Float64}",
    "conversions": "i_conversions",
    "zero_results": "i_results = 0",
}
# Appended to the main query: with ClickHouse's remembered join sizes, every build after the first in a process
# cost ~1.7x the CPU of the first (docs/reports.md "Performance"); off, later builds cost what the first does.
SERIES_SETTINGS = "collect_hash_table_stats_during_joins = 0"
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CUSTOM_FIELDS = FEEDBACK_FIELDS | IMPRESSION_FIELDS  # whitelisted in custom_metrics.py


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class MetricQueries:
    """Builds and runs the queries for one experiment, window and set of metrics."""

    def __init__(self, database: str, experiment: str, window: tuple[datetime | None, datetime],
                 dwell_threshold: float, metrics: dict[str, MetricDef],
                 pre_window: tuple[datetime, datetime] | None = None) -> None:
        if not _IDENT.match(database):
            raise ValueError(f"database name {database!r} is not a plain identifier")
        self.db = database
        self.metrics = {k: m for k, m in metrics.items() if m.kind in ("ratio", "mean")}
        self.params: dict = {"experiment": experiment, "end": _ts(window[1]), "dwell": float(dwell_threshold)}
        self.start_clause = ""
        if window[0] is not None:
            self.params["start"] = _ts(window[0])
            self.start_clause = "AND ts >= {start:DateTime64(3, 'UTC')}"
        self.pre_window = pre_window
        if pre_window is not None:
            self.params["pre_start"], self.params["pre_end"] = _ts(pre_window[0]), _ts(pre_window[1])
        self._imp_custom, self._fb_custom, self._unit_custom = self._custom_columns()

    # -- custom metrics: per-impression columns, then per-unit sums --------------------------------------
    def _condition(self, event, prefix: str) -> str:
        parts = [] if event.event == "impression" else [f"type = '{event.event}'"]
        for j, f in enumerate(event.filters):
            name = f"{prefix}_f{j}"
            if isinstance(f.value, list):
                kind = "Array(String)" if all(isinstance(v, str) for v in f.value) else "Array(Float64)"
                self.params[name] = list(f.value) if "String" in kind else [float(v) for v in f.value]
            else:
                kind = "String" if isinstance(f.value, str) else "Float64"
                self.params[name] = f.value if kind == "String" else float(f.value)
            parts.append(f"{_CUSTOM_FIELDS[f.field]} {f.op} {{{name}:{kind}}}")
        return " AND ".join(parts) or "1"

    def _custom_columns(self) -> tuple[list[str], list[str], list[str]]:
        imp, fb, unit = [], [], []
        for metric in self.metrics.values():
            if metric.custom is None:
                continue
            sides = [(metric.custom.numerator, metric.numerator)]
            if metric.custom.denominator is not None:
                sides.append((metric.custom.denominator, metric.denominator))
            for event, column in sides:
                cond = self._condition(event, column)
                cap = getattr(event, "cap", None)
                if cap is not None:  # winsorized per event, before any sum: one huge value counts as the cap
                    self.params[f"{column}_cap"] = float(cap)
                if event.event == "impression":
                    value = "toFloat64(latency_ms)" if event.aggregate == "sum" else "1"
                    if cap is not None and event.aggregate == "sum":
                        value = f"least({value}, {{{column}_cap:Float64}})"
                    imp.append(f"if({cond}, {value}, 0) AS i_{column}")
                else:  # counted by distinct event id, summed over distinct events: replayed copies count once
                    each = f"least(e.2, {{{column}_cap:Float64}})" if cap is not None else "e.2"
                    agg = (f"arraySum(e -> {each}, groupUniqArrayIf((event_id, value), {cond}))"
                           if event.aggregate == "sum" else f"uniqExactIf(event_id, {cond})")
                    fb.append(f"toFloat64({agg}) AS i_{column}")
                unit.append(f"i_{column} AS {column}")
        return imp, fb, unit

    # -- the shared CTEs ----------------------------------------------------------------------------------
    def searches_cte(self, prefix: str = "", imp_where: str = "", fb_where: str = "",
                     extra: tuple[str, ...] = ()) -> str:
        """The `imp`, `fb` and `searches` CTEs (named with `prefix`); by default this experiment's enrolled
        impressions in the window. The CUPED pre-period uses the same columns over other rows; `extra`
        ("expr AS i_name") adds impression columns (the aggregates' latency, checksums and times)."""
        imp_where = imp_where or (f"experiment = {{experiment:String}} AND enrolled {self.start_clause} "
                                  f"AND ts < {{end:DateTime64(3, 'UTC')}}")
        fb_where = fb_where or "experiment = {experiment:String}"
        imp_extra = "".join(", " + c for c in (*self._imp_custom, *extra))
        fb_extra = "".join(", " + c for c in self._fb_custom)
        fb_cols = "".join(f", fb.{c.rsplit(' AS ', 1)[1]} AS {c.rsplit(' AS ', 1)[1]}" for c in self._fb_custom)
        imp_cols = "".join(f", imp.{c.rsplit(' AS ', 1)[1]} AS {c.rsplit(' AS ', 1)[1]}"
                           for c in (*self._imp_custom, *extra))
        p = prefix
        return f"""
{p}imp AS (
    SELECT cityHash64(impression_id) AS imp_key, arm, unit_id, toDate(ts, 'UTC') AS day,
           doc_ids.size0 AS i_results{imp_extra}
    FROM {self.db}.impressions FINAL
    WHERE {imp_where}
),
{p}fb AS (
    SELECT cityHash64(impression_id) AS imp_key,
           uniqExactIf(doc_id, type = 'click') AS i_clicks,
           minIf(position, type = 'click') AS i_first_click,
           maxIf(value, type = 'dwell') AS i_max_dwell,
           uniqExactIf(event_id, type = 'conversion') AS i_conversions{fb_extra}
    FROM {self.db}.feedback
    WHERE {fb_where}
    GROUP BY imp_key
),
{p}searches AS (
    SELECT imp.arm AS arm, imp.unit_id AS unit_id, imp.day AS day, imp.i_results AS i_results,
           fb.i_clicks AS i_clicks, fb.i_first_click AS i_first_click, fb.i_max_dwell AS i_max_dwell,
           fb.i_conversions AS i_conversions{imp_cols}{fb_cols}
    FROM {p}imp AS imp LEFT JOIN {p}fb AS fb ON imp.imp_key = fb.imp_key
    SETTINGS join_use_nulls = 0
)"""

    def _unit_columns(self) -> list[tuple[str, str]]:
        custom = [(c.rsplit(" AS ", 1)[1], c.rsplit(" AS ", 1)[0]) for c in self._unit_custom]
        return list(UNIT_COLUMNS.items()) + custom

    def _series_sql(self, metrics: list[MetricDef], charted: MetricDef | None) -> tuple[str, list, list]:
        """Per (arm, day): traffic, the change that day brings to the charted metric's per-arm sums, and each
        metric's final per-unit sums (booked on the unit's first active day; only their total over days means
        anything). Returns the SQL and, per metric, the column indexes of its final and cumulative sums.

        For the charted metric, each unit's values are kept as day-sorted cumulative arrays cut at the end
        of each active day; the metric is evaluated on them (m_k after k active days), and on its k-th active
        day the unit adds m_k - m_(k-1) to the sum, m_k^2 - m_(k-1)^2 to the sum of squares, ..., and 1 to n
        on its first. Running totals over days (in Python) then give the sums of any daily look.
        """
        columns = self._unit_columns()
        names = [name for name, _ in columns]
        sums: dict[str, int] = {}  # SQL of a per-(arm, day) sum -> its column index (shared sums built once)

        def total(sql: str) -> int:
            return sums.setdefault(sql, len(sums))

        def layout(m: str, d: str | None, first: str) -> list[int]:
            """The five (or two) sums of a statistic; `first` (k = 1) books final values once per unit."""
            if first:
                cond = ", k = 1"
                out = [total(f"sumIf({m}{cond})"), total(f"sumIf({m} * {m}{cond})")]
                if d:
                    out += [total(f"sumIf({d}{cond})"), total(f"sumIf({d} * {d}{cond})"),
                            total(f"sumIf({m} * {d}{cond})")]
                return out
            out = [total(f"sum({m} - p{m})"), total(f"sum({m} * {m} - p{m} * p{m})")]
            if d:
                out += [total(f"sum({d} - p{d})"), total(f"sum({d} * {d} - p{d} * p{d})"),
                        total(f"sum({m} * {d} - p{m} * p{d})")]
            return out

        scalars, finals = {}, []
        for metric in metrics:  # final per-unit values: plain expressions over the unit's totals
            m = scalars.setdefault(f"toFloat64({metric.numerator})", f"f{len(scalars)}")
            d = scalars.setdefault(f"toFloat64({metric.denominator})", f"f{len(scalars)}") \
                if metric.kind == "ratio" else None
            finals.append(layout(m, d, "first"))
        arrays, joins, charted_layout = [], [], []
        if charted is not None:
            used = [n for n in names if n in charted.columns]
            lam = ", ".join(used)
            cum = ", ".join(f"c_{n}" for n in used)
            sides = [("cm", charted.numerator)] + ([("cd", charted.denominator)] if charted.kind == "ratio" else [])
            for alias, expr in sides:
                arrays.append(f"arrayMap(({lam}) -> toFloat64({expr}), {cum}) AS {alias}")
                joins += [f"{alias} AS {alias}v", f"arrayPopBack(arrayPushFront({alias}, 0.)) AS p{alias}v"]
            charted_layout = layout("cmv", "cdv" if charted.kind == "ratio" else None, "")
        pre_ctes, cov_cols, cov_join, cov_layout = self._covariate(charted, columns, scalars, total)
        daily_cov = []
        if cov_layout:  # CUPED per daily look: the unit's metric so far (cmv, cdv) with its fixed x and z
            x_terms = [total(f"sumIf({e}, k = 1)") for e in ("cx", "cx * cx", "cz", "cx * cz")]
            cross = [total(f"sum(cmv * {w} - pcmv * {w})") for w in ("cx", "cz")]
            if charted.kind == "ratio":
                cross += [total(f"sum(cdv * {w} - pcdv * {w})") for w in ("cx", "cz")]
            daily_cov = x_terms + cross
        needed = {"searches"} | set(charted.columns if charted is not None else ())
        sql = (f"WITH {self.head_ctes()}{pre_ctes}\n"
               f"units AS ({self.units_select(columns, needed, bool(cov_join))}),\n"
               f"steps AS (SELECT arm, days, arrayPopFront(arrayDifference(arrayPushFront(c_searches, 0.))) "
               f"AS day_searches{''.join(', ' + a for a in arrays)}"
               f"{''.join(f', {expr} AS {alias}' for expr, alias in scalars.items())}{cov_cols} FROM units{cov_join})\n"
               f"{self.result_select(list(sums), joins)}\nSETTINGS {SERIES_SETTINGS}")
        return sql, finals, charted_layout, (cov_layout, daily_cov)

    def result_select(self, sums: list[str], joins: list[str]) -> str:
        """Per (day, arm) from `steps`: one row per (unit, active day) through ARRAY JOIN, every sum in it
        (aggregates.py books the once-per-unit sums apart, reading `steps` twice)."""
        return (f"SELECT day, arm, count() AS active_units, sum(day_imps) AS impressions, countIf(k = 1) AS new_units"
                f"{''.join(', ' + x for x in sums)}\n"
                f"FROM steps ARRAY JOIN days AS day, day_searches AS day_imps, arrayEnumerate(days) AS k"
                f"{''.join(', ' + j for j in joins)}\nGROUP BY day, arm ORDER BY day, arm")

    def head_ctes(self) -> str:  # the CTEs `units` reads: the raw events (aggregates.py reads none)
        return self.searches_cte() + ","

    def units_select(self, columns, needed: set, with_unit: bool) -> str:
        """One row per (arm, unit): its active days, the day-sorted cumulative arrays c_NAME of the columns in
        `needed` (cut at the end of each active day), and every column's total, from the raw events."""
        cum_arrays = ", ".join(
            f"arrayFilter((v, e) -> e, arrayCumSum(arraySort((v, d) -> d, groupArray(toFloat64({expr})), "
            f"groupArray(day))), ends) AS c_{n}" for n, expr in columns if n in needed)
        totals = ", ".join(f"sum(toFloat64({expr})) AS {n}" for n, expr in columns)
        return (f"SELECT arm{', unit_id' if with_unit else ''}, arraySort(groupArray(day)) AS all_days, "
                f"arrayMap(k -> k = length(all_days) OR all_days[k] != all_days[k + 1], arrayEnumerate(all_days)) "
                f"AS ends, arrayFilter((v, e) -> e, all_days, ends) AS days, {cum_arrays}, {totals} "
                f"FROM searches GROUP BY arm, unit_id")

    def _covariate(self, charted: MetricDef | None, columns, scalars: dict, total) -> tuple[str, str, str, list]:
        """CUPED: the charted (primary) metric per unit over the pre-period [pre_start, pre_end), from every
        impression of the unit (any experiment or arm, enrolled or not: the default traffic included) and
        its feedback, joined to the experiment's units as x (0 without pre-period data) and z (1 with data);
        returns the CTEs, the steps columns, the join and the column indexes of CovariateSums' fields."""
        if self.pre_window is None or charted is None:
            return "", "", "", []
        pre = "ts >= {pre_start:DateTime64(3, 'UTC')} AND ts < {pre_end:DateTime64(3, 'UTC')}"
        sums = ", ".join(f"sum(toFloat64({expr})) AS {n}" for n, expr in columns)
        x = (f"if(toFloat64({charted.denominator}) > 0, toFloat64({charted.numerator}) / "
             f"toFloat64({charted.denominator}), 0.)" if charted.kind == "ratio" else f"toFloat64({charted.numerator})")
        ctes = (f"{self.searches_cte('pre_', pre, pre)},\n"
                f"pre_units AS (SELECT unit_id AS pre_unit, {x} AS pre_x FROM (SELECT unit_id, {sums} "
                f"FROM pre_searches GROUP BY unit_id)),")
        cols = ", pre_x AS cx, toFloat64(pre_unit != '') AS cz"  # join_use_nulls = 0: '' when unmatched
        join = " LEFT JOIN pre_units ON unit_id = pre_unit SETTINGS join_use_nulls = 0"
        m = scalars[f"toFloat64({charted.numerator})"]
        d = scalars[f"toFloat64({charted.denominator})"] if charted.kind == "ratio" else "1."
        products = [m, f"{m} * {m}", d, f"{d} * {d}", f"{m} * {d}", "cx", "cx * cx", "cz", "cx * cz",
                    f"{m} * cx", f"{d} * cx", f"{m} * cz", f"{d} * cz"]
        return ctes, cols, join, [total(f"sumIf({e}, k = 1)") for e in products]

    @staticmethod
    def _statistic(metric: MetricDef, n: int, values: list) -> RatioStatistic | SampleMean:
        if metric.kind == "mean":
            return SampleMean(n, float(values[0]), float(values[1]))
        return RatioStatistic(n, *(float(v) for v in values))

    def series(self, client, charted: MetricDef | None = None) -> tuple[dict, list[dict], dict[date, dict], dict,
                                                                      dict | None]:
        """(final sums: metric -> arm -> statistic, daily traffic rows, day -> arm -> the charted metric's
        statistic over the units and events up to the end of that day, arm -> (units, impressions),
        arm -> the charted metric's CovariateSums with its pre-period covariate, or None without pre_window)."""
        metrics = list(self.metrics.values())
        if charted is not None and charted.kind not in ("ratio", "mean"):
            charted = None
        sql, finals, charted_layout, (cov_layout, daily_cov) = self._series_sql(metrics, charted)
        running: dict[str, list[float]] = {}
        daily, cumulative, cumulative_cov, traffic = [], {}, {}, {}
        for row in client.query(sql, parameters=self.params).result_rows:
            day, arm, active, impressions, new_units, values = row[0], row[1], row[2], row[3], row[4], row[5:]
            daily.append({"day": day.isoformat(), "arm": arm, "units": int(active), "impressions": int(impressions)})
            totals = running.setdefault(arm, [0.0] * (1 + len(values)))
            totals[0] += new_units
            units, seen = traffic.get(arm, (0, 0))
            traffic[arm] = (units + int(new_units), seen + int(impressions))
            for j, value in enumerate(values):
                totals[j + 1] += value
            if charted is not None:
                cumulative.setdefault(day, {})[arm] = self._statistic(
                    charted, int(totals[0]), [totals[1 + j] for j in charted_layout])
                if daily_cov:
                    cumulative_cov.setdefault(day, {})[arm] = self._covariate_sums(
                        charted, int(totals[0]), [totals[1 + j] for j in charted_layout],
                        [totals[1 + j] for j in daily_cov])
        final = {m.name: {arm: self._statistic(m, int(t[0]), [t[1 + j] for j in layout])
                          for arm, t in running.items()} for m, layout in zip(metrics, finals)}
        covariate = {arm: CovariateSums(int(t[0]), *(float(t[1 + j]) for j in cov_layout))
                     for arm, t in running.items()} if cov_layout else None
        for series in (cumulative, cumulative_cov):
            current: dict = {}
            for day in sorted(series):  # an arm without traffic on a day keeps its sums of the day before
                current.update(series[day])
                series[day] = dict(current)
        return final, daily, cumulative, traffic, covariate, cumulative_cov

    @staticmethod
    def _covariate_sums(metric: MetricDef, n: int, stat: list, cov: list) -> CovariateSums:
        """CovariateSums from a look's running sums: the metric's (m, m2[, d, d2, md]) and x, x2, z, xz, mx, mz
        [, dx, dz]; a mean has d = 1 for every unit."""
        x, xx, z, xz, mx, mz = (float(v) for v in cov[:6])
        if metric.kind == "ratio":
            m, mm, d, dd, md = (float(v) for v in stat)
            dx, dz = (float(v) for v in cov[6:8])
        else:
            m, mm = (float(v) for v in stat)
            d, dd, md, dx, dz = float(n), float(n), m, x, z
        return CovariateSums(n, m, mm, d, dd, md, x, xx, z, xz, mx, dx, mz, dz)

    def arm_summaries(self, client, traffic: dict[str, tuple[int, int]]) -> dict[str, ArmSummary]:
        """Latency p95 (exact, over deduplicated impressions) and served checksums per arm; units and
        impressions come from `series`."""
        grid = ", ".join(repr(p) for p in LATENCY_GRID)
        sql = (f"SELECT arm, quantileExact(0.95)(latency_ms), groupUniqArray(encoder_checksum), "
               f"groupUniqArray(index_checksum), quantilesExact({grid})(latency_ms) "
               f"FROM {self.db}.impressions FINAL WHERE experiment = {{experiment:String}} AND enrolled "
               f"{self.start_clause} AND ts < {{end:DateTime64(3, 'UTC')}} GROUP BY arm ORDER BY arm")
        out = {}
        for arm, p95, encoders, indexes, grid_values in client.query(sql, parameters=self.params).result_rows:
            units, impressions = traffic.get(arm, (0, 0))
            out[arm] = ArmSummary(arm, units, impressions, float(p95), tuple(sorted(encoders)), tuple(sorted(indexes)),
                                  tuple(zip(LATENCY_GRID, (float(v) for v in grid_values))))
        return out


def collect(client, experiment, *, metrics: dict[str, MetricDef], database: str = "abgate",
            dwell_threshold: float = DEFAULT_DWELL_THRESHOLD_S, cumulative_metric: str | None = None,
            now: datetime | None = None, source=None) -> ExperimentData:
    """Run the metric queries for one experiment (an experiments.schema.Experiment) and return the sums.
    `source`: a MetricQueries subclass (experiments/aggregates.py) that reads something else than raw events."""
    window = analysis_window(experiment.start, experiment.end, now)
    pre_days = getattr(getattr(experiment, "design", None), "cuped_pre_days", None)
    pre_window = (experiment.start - timedelta(days=pre_days), experiment.start) \
        if pre_days and experiment.start is not None else None
    query = (source or MetricQueries)(database, experiment.name, window, dwell_threshold, metrics, pre_window)
    metric = metrics.get(cumulative_metric) if cumulative_metric else None
    stats, daily, by_day, traffic, covariate, cov_by_day = query.series(client, metric)
    arms = query.arm_summaries(client, traffic)
    cumulative: list[CumulativePoint] = []
    if by_day:
        days = sorted(by_day)
        cumulative = [CumulativePoint(day, by_day[day], cov_by_day.get(day)) for day in look_days(days[0], days[-1])
                      if day in by_day]
    return ExperimentData(experiment.name, window, metrics, stats, arms, daily,
                          cumulative_metric if cumulative else None, cumulative, pre_window, covariate)
