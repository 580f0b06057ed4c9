"""The ClickHouse SQL behind experiments/metrics.py.

One query computes every metric, at every daily look, from one scan of the event log:

    searches  one row per (deduplicated) enrolled impression in the window, with its feedback summed up
              (LEFT JOIN on impression_id: feedback that names no analysed impression is ignored)
    unit_day  GROUP BY arm, unit_id, day: the UNIT_COLUMNS below (+ c{i}_num / c{i}_den of custom metrics)
    units     per unit, day-sorted cumulative arrays of those columns; each metric evaluated on them
    result    per (arm, day): what that day adds to n, sum m, sum m^2, sum d, sum d^2, sum m*d

Python sums the per-day changes: day L's running totals are exactly the sums a report run at the end of
day L would get (the units seen so far, each with its events so far), and the last day's are the final
analysis. So the sequential chart costs nothing extra, and the work is one row per (unit, active day).
Values are passed as query parameters; identifiers come only from code (the database name is checked).
"""

from __future__ import annotations

import re
from datetime import date, datetime

from experiments.custom_metrics import FEEDBACK_FIELDS, IMPRESSION_FIELDS
from experiments.metrics import ArmSummary, CumulativePoint, MetricDef
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
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CUSTOM_FIELDS = FEEDBACK_FIELDS | IMPRESSION_FIELDS  # whitelisted in custom_metrics.py


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


class MetricQueries:
    """Builds and runs the queries for one experiment, window and set of metrics."""

    def __init__(self, database: str, experiment: str, window: tuple[datetime | None, datetime],
                 dwell_threshold: float, metrics: dict[str, MetricDef]) -> None:
        if not _IDENT.match(database):
            raise ValueError(f"database name {database!r} is not a plain identifier")
        self.db = database
        self.metrics = {k: m for k, m in metrics.items() if m.kind in ("ratio", "mean")}
        self.params: dict = {"experiment": experiment, "end": _ts(window[1]), "dwell": float(dwell_threshold)}
        self.start_clause = ""
        if window[0] is not None:
            self.params["start"] = _ts(window[0])
            self.start_clause = "AND ts >= {start:DateTime64(3, 'UTC')}"
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
                if event.event == "impression":
                    value = "toFloat64(latency_ms)" if event.aggregate == "sum" else "1"
                    imp.append(f"if({cond}, {value}, 0) AS i_{column}")
                else:
                    agg = f"sumIf(value, {cond})" if event.aggregate == "sum" else f"countIf({cond})"
                    fb.append(f"toFloat64({agg}) AS i_{column}")
                unit.append(f"i_{column} AS {column}")
        return imp, fb, unit

    # -- the shared CTEs ----------------------------------------------------------------------------------
    def searches_cte(self) -> str:
        imp_extra = "".join(", " + c for c in self._imp_custom)
        fb_extra = "".join(", " + c for c in self._fb_custom)
        fb_cols = "".join(f", fb.{c.rsplit(' AS ', 1)[1]} AS {c.rsplit(' AS ', 1)[1]}" for c in self._fb_custom)
        imp_cols = "".join(f", imp.{c.rsplit(' AS ', 1)[1]} AS {c.rsplit(' AS ', 1)[1]}" for c in self._imp_custom)
        return f"""
imp AS (
    SELECT impression_id, arm, unit_id, toDate(ts, 'UTC') AS day, doc_ids.size0 AS i_results{imp_extra}
    FROM {self.db}.impressions FINAL
    WHERE experiment = {{experiment:String}} AND enrolled {self.start_clause}
      AND ts < {{end:DateTime64(3, 'UTC')}}
),
fb AS (
    SELECT impression_id,
           uniqExactIf(doc_id, type = 'click') AS i_clicks,
           minIf(position, type = 'click') AS i_first_click,
           maxIf(value, type = 'dwell') AS i_max_dwell,
           countIf(type = 'conversion') AS i_conversions{fb_extra}
    FROM {self.db}.feedback FINAL
    WHERE experiment = {{experiment:String}}
    GROUP BY impression_id
),
searches AS (
    SELECT imp.arm AS arm, imp.unit_id AS unit_id, imp.day AS day, imp.i_results AS i_results,
           fb.i_clicks AS i_clicks, fb.i_first_click AS i_first_click, fb.i_max_dwell AS i_max_dwell,
           fb.i_conversions AS i_conversions{imp_cols}{fb_cols}
    FROM imp LEFT JOIN fb ON imp.impression_id = fb.impression_id
    SETTINGS join_use_nulls = 0
)"""

    def _unit_columns(self) -> list[tuple[str, str]]:
        custom = [(c.rsplit(" AS ", 1)[1], c.rsplit(" AS ", 1)[0]) for c in self._unit_custom]
        return list(UNIT_COLUMNS.items()) + custom

    def _series_sql(self, metrics: list[MetricDef]) -> tuple[str, list[list[int]]]:
        """Per (arm, day): the change that day brings to each metric's per-arm sums, plus traffic counts.

        Per unit, its impressions' values are kept as day-sorted cumulative arrays, cut at the last impression
        of each active day; the metric is evaluated on them (m_k after k active days), and the unit adds
        m_k - m_(k-1) to the sum, m_k^2 - m_(k-1)^2 to the sum of squares, ... on its k-th active day, and 1 to
        n on its first. A prefix sum over days (in Python) gives the sums of any look, and the last look is the
        final analysis: one GROUP BY unit over the impressions, then (unit, active day) rows only.
        """
        columns = self._unit_columns()
        names = [name for name, _ in columns]
        cum = ", ".join(f"arrayFilter((v, e) -> e, arrayCumSum(arraySort((v, d) -> d, groupArray(toFloat64({expr})), "
                        f"groupArray(day))), ends) AS c_{n}" for n, expr in columns)
        # Metrics share expressions (six built-ins divide by `searches`): each array and each sum is built once.
        arrays: dict[str, str] = {}   # SQL of a per-unit array -> its alias
        sums: dict[str, int] = {}     # SQL of a per-(arm, day) sum -> its column index
        layouts = []                  # per metric: indexes of its sums, in the statistic's field order

        def array(expr: str) -> str:
            if expr.strip() in names:  # a plain column: its cumulative array as it is
                return f"c_{expr.strip()}"
            used = [n for n in names if n in re.findall(r"[a-z_][a-z0-9_]*", expr)]
            sql = f"arrayMap(({', '.join(used)}) -> toFloat64({expr}), {', '.join(f'c_{n}' for n in used)})"
            return arrays.setdefault(sql, f"a{len(arrays)}")

        def total(sql: str) -> int:
            return sums.setdefault(sql, len(sums))

        for metric in metrics:
            m = array(metric.numerator)
            layout = [total(f"sum({m}v - p{m}v)"), total(f"sum({m}v * {m}v - p{m}v * p{m}v)")]
            if metric.kind == "ratio":
                d = array(metric.denominator)
                layout += [total(f"sum({d}v - p{d}v)"), total(f"sum({d}v * {d}v - p{d}v * p{d}v)"),
                           total(f"sum({m}v * {d}v - p{m}v * p{d}v)")]
            layouts.append(layout)
        per_metric = [f"{sql} AS {alias}" for sql, alias in arrays.items()]
        joined = sorted({a for sql in sums for a in re.findall(r"\b(c_\w+|a\d+)v\b", sql)})
        joins = [j for alias in joined
                 for j in (f"{alias} AS {alias}v", f"arrayPopBack(arrayPushFront({alias}, 0.)) AS p{alias}v")]
        sums = list(sums)
        sql = (f"WITH {self.searches_cte()},\n"
                f"units AS (SELECT arm, arraySort(groupArray(day)) AS all_days, "
                f"arrayMap(k -> k = length(all_days) OR all_days[k] != all_days[k + 1], arrayEnumerate(all_days)) AS ends, "
                f"arrayFilter((v, e) -> e, all_days, ends) AS days, {cum} "
                f"FROM searches GROUP BY arm, unit_id),\n"
                f"steps AS (SELECT arm, days, arrayDifference(arrayPushFront(c_searches, 0.)) AS day_searches"
                f"{''.join(', ' + p for p in per_metric)}{''.join(f', c_{n}' for n in names)} FROM units)\n"
                f"SELECT day, arm, count() AS active_units, sum(day_imps) AS impressions, countIf(k = 1) AS new_units"
                f"{''.join(', ' + x for x in sums)}\n"
                f"FROM steps ARRAY JOIN days AS day, arrayPopFront(day_searches) AS day_imps, arrayEnumerate(days) AS k"
                f"{''.join(', ' + j for j in joins)}\n"
                f"GROUP BY day, arm ORDER BY day, arm")
        return sql, layouts

    @staticmethod
    def _statistic(metric: MetricDef, n: int, values: list) -> RatioStatistic | SampleMean:
        if metric.kind == "mean":
            return SampleMean(n, float(values[0]), float(values[1]))
        return RatioStatistic(n, *(float(v) for v in values))

    def series(self, client) -> tuple[dict, list[dict], dict[date, dict]]:
        """(final sums: metric -> arm -> statistic, daily traffic rows, day -> metric -> arm -> statistic).

        The cumulative sums are kept for every day with traffic; the last day's are the final ones.
        """
        metrics = list(self.metrics.values())
        sql, layouts = self._series_sql(metrics) if metrics else ("", [])
        rows = client.query(sql, parameters=self.params).result_rows if metrics else []
        running: dict[str, list[float]] = {}
        daily, by_day = [], {}
        for row in rows:
            day, arm, active, impressions, new_units, deltas = row[0], row[1], row[2], row[3], row[4], row[5:]
            daily.append({"day": day.isoformat(), "arm": arm, "units": int(active), "impressions": int(impressions)})
            totals = running.setdefault(arm, [0.0] * (1 + len(deltas)))
            totals[0] += new_units
            for j, value in enumerate(deltas):
                totals[j + 1] += value
            snapshot = {metric.name: self._statistic(metric, int(totals[0]), [totals[1 + j] for j in layout])
                        for metric, layout in zip(metrics, layouts)}
            by_day.setdefault(day, {})[arm] = snapshot
        cumulative: dict[date, dict] = {}
        current: dict[str, dict] = {}
        for day in sorted(by_day):  # an arm without traffic on a day keeps its sums of the day before
            current.update(by_day[day])
            cumulative[day] = {m.name: {arm: stats[m.name] for arm, stats in current.items()} for m in metrics}
        final = cumulative[max(cumulative)] if cumulative else {m.name: {} for m in metrics}
        return final, daily, cumulative

    def arm_summaries(self, client) -> dict[str, ArmSummary]:
        sql = (f"SELECT arm, uniqExact(unit_id), count(), quantileExact(0.95)(latency_ms), "
               f"groupUniqArray(encoder_checksum), groupUniqArray(index_checksum) "
               f"FROM {self.db}.impressions FINAL WHERE experiment = {{experiment:String}} AND enrolled "
               f"{self.start_clause} AND ts < {{end:DateTime64(3, 'UTC')}} GROUP BY arm ORDER BY arm")
        return {row[0]: ArmSummary(row[0], int(row[1]), int(row[2]), float(row[3]) if row[2] else None,
                                   tuple(sorted(row[4])), tuple(sorted(row[5])))
                for row in client.query(sql, parameters=self.params).result_rows}
