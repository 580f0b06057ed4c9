"""The ClickHouse SQL behind experiments/metrics.py.

Three levels, each a CTE, so every metric shares one scan of the event log:

    searches  one row per (deduplicated) enrolled impression in the window, with its feedback summed up
              (LEFT JOIN on impression_id: feedback that names no analysed impression is ignored)
    per unit  GROUP BY arm, unit_id: the UNIT_COLUMNS below (+ c{i}_num / c{i}_den of custom metrics)
    per arm   sums of m, m^2, d, d^2, m*d over units: the sufficient statistics

The cumulative series re-aggregates per (unit, day), keeps each unit's days as arrays and, for each daily
look, sums the days up to it, so look L sees exactly the units and events a report run on day L would.
Values are passed as query parameters; identifiers come only from code (the database name is checked).
"""

from __future__ import annotations

import re
from datetime import date, datetime

from experiments.metrics import ArmSummary, CumulativePoint, MetricDef
from experiments.stats.statistics import RatioStatistic, SampleMean

# Per-unit columns, as aggregates of the per-impression rows of `searches` (whose columns carry an i_ prefix:
# ClickHouse resolves an alias before a column, so `sum(clicks) AS clicks` would nest aggregates).
UNIT_COLUMNS = {
    "searches": "count()",
    "clicks": "sum(i_clicks)",
    "clicked": "countIf(i_clicks > 0)",
    "rr": "sum(if(i_first_click > 0, 1.0 / i_first_click, 0.0))",
    "dwell_ok": "countIf(i_max_dwell >= {dwell:Float64})",
    "conversions": "sum(i_conversions)",
    "zero_results": "countIf(i_results = 0)",
}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CUSTOM_FIELDS = {"position": "position", "value": "value", "doc_id": "doc_id", "latency_ms": "latency_ms",
                  "results": "length(doc_ids)", "top_score": "if(length(scores) > 0, scores[1], 0)",
                  "query": "query"}


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
                unit.append(f"sum(i_{column}) AS {column}")
        return imp, fb, unit

    # -- the shared CTEs ----------------------------------------------------------------------------------
    def searches_cte(self) -> str:
        imp_extra = "".join(", " + c for c in self._imp_custom)
        fb_extra = "".join(", " + c for c in self._fb_custom)
        fb_cols = "".join(f", fb.{c.rsplit(' AS ', 1)[1]} AS {c.rsplit(' AS ', 1)[1]}" for c in self._fb_custom)
        imp_cols = "".join(f", imp.{c.rsplit(' AS ', 1)[1]} AS {c.rsplit(' AS ', 1)[1]}" for c in self._imp_custom)
        return f"""
imp AS (
    SELECT impression_id, arm, unit_id, toDate(ts, 'UTC') AS day, length(doc_ids) AS i_results{imp_extra}
    FROM {self.db}.impressions_unique
    WHERE experiment = {{experiment:String}} AND enrolled {self.start_clause}
      AND ts < {{end:DateTime64(3, 'UTC')}}
),
fb AS (
    SELECT impression_id,
           uniqExactIf(doc_id, type = 'click') AS i_clicks,
           minIf(position, type = 'click') AS i_first_click,
           maxIf(value, type = 'dwell') AS i_max_dwell,
           countIf(type = 'conversion') AS i_conversions{fb_extra}
    FROM {self.db}.feedback_unique
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

    def _unit_select(self) -> str:
        return ", ".join([f"{expr} AS {name}" for name, expr in UNIT_COLUMNS.items()] + self._unit_custom)

    @staticmethod
    def _sums(metric: MetricDef, i: int) -> list[str]:
        m = f"toFloat64({metric.numerator})"
        if metric.kind == "mean":
            return [f"sum({m}) AS s{i}", f"sum(pow({m}, 2)) AS q{i}"]
        d = f"toFloat64({metric.denominator})"
        return [f"sum({m}) AS s{i}", f"sum(pow({m}, 2)) AS q{i}", f"sum({d}) AS ds{i}",
                f"sum(pow({d}, 2)) AS dq{i}", f"sum({m} * {d}) AS md{i}"]

    @staticmethod
    def _statistic(metric: MetricDef, n: int, values: list) -> RatioStatistic | SampleMean:
        if metric.kind == "mean":
            return SampleMean(n, float(values[0]), float(values[1]))
        return RatioStatistic(n, *(float(v) for v in values))

    # -- queries --------------------------------------------------------------------------------------------
    def unit_stats(self, client) -> dict[str, dict[str, RatioStatistic | SampleMean]]:
        metrics = list(self.metrics.values())
        if not metrics:
            return {}
        sums = [s for i, m in enumerate(metrics) for s in self._sums(m, i)]
        sql = (f"WITH {self.searches_cte()},\nunits AS (SELECT arm, unit_id, {self._unit_select()} "
               f"FROM searches GROUP BY arm, unit_id)\n"
               f"SELECT arm, count() AS n, {', '.join(sums)} FROM units GROUP BY arm ORDER BY arm")
        out: dict[str, dict] = {m.name: {} for m in metrics}
        for row in client.query(sql, parameters=self.params).result_rows:
            arm, n, values = row[0], int(row[1]), list(row[2:])
            for m in metrics:
                width = 2 if m.kind == "mean" else 5
                out[m.name][arm] = self._statistic(m, n, values[:width])
                values = values[width:]
        return out

    def arm_summaries(self, client) -> dict[str, ArmSummary]:
        sql = (f"SELECT arm, uniqExact(unit_id), count(), quantileExact(0.95)(latency_ms), "
               f"groupUniqArray(encoder_checksum), groupUniqArray(index_checksum) "
               f"FROM {self.db}.impressions_unique WHERE experiment = {{experiment:String}} AND enrolled "
               f"{self.start_clause} AND ts < {{end:DateTime64(3, 'UTC')}} GROUP BY arm ORDER BY arm")
        return {row[0]: ArmSummary(row[0], int(row[1]), int(row[2]), float(row[3]) if row[2] else None,
                                   tuple(sorted(row[4])), tuple(sorted(row[5])))
                for row in client.query(sql, parameters=self.params).result_rows}

    def daily_counts(self, client) -> list[dict]:
        sql = (f"SELECT toDate(ts, 'UTC') AS day, arm, uniqExact(unit_id), count() "
               f"FROM {self.db}.impressions_unique WHERE experiment = {{experiment:String}} AND enrolled "
               f"{self.start_clause} AND ts < {{end:DateTime64(3, 'UTC')}} GROUP BY day, arm ORDER BY day, arm")
        return [{"day": row[0].isoformat(), "arm": row[1], "units": int(row[2]), "impressions": int(row[3])}
                for row in client.query(sql, parameters=self.params).result_rows]

    def cumulative(self, client, metric: MetricDef, looks: list[date]) -> list[CumulativePoint]:
        """The metric's sums at each look, over each unit's events up to and including that day."""
        columns = [c for c in metric.columns]
        unit_day = ", ".join(f"{expr} AS {name}" for name, expr in UNIT_COLUMNS.items() if name in columns)
        unit_day = ", ".join(filter(None, [unit_day] + [c for c in self._unit_custom
                                                        if c.rsplit(" AS ", 1)[1] in columns]))
        arrays = ", ".join(f"groupArray({c}) AS a_{c}" for c in columns)
        upto = ", ".join(f"arraySum(arrayFilter((v, d) -> d <= look, a_{c}, days)) AS {c}" for c in columns)
        sums = self._sums(metric, 0)
        params = dict(self.params, looks=[d.isoformat() for d in looks])
        sql = (f"WITH {self.searches_cte()},\n"
               f"unit_day AS (SELECT arm, unit_id, day, {unit_day} FROM searches GROUP BY arm, unit_id, day),\n"
               f"unit_days AS (SELECT arm, unit_id, groupArray(day) AS days, min(day) AS first_day, {arrays} "
               f"FROM unit_day GROUP BY arm, unit_id),\n"
               f"looks AS (SELECT arm, look, {upto} FROM unit_days "
               f"ARRAY JOIN arrayFilter(l -> l >= first_day, {{looks:Array(Date)}}) AS look)\n"
               f"SELECT look, arm, count() AS n, {', '.join(sums)} FROM looks GROUP BY look, arm ORDER BY look, arm")
        points: dict[date, dict] = {}
        for row in client.query(sql, parameters=params).result_rows:
            points.setdefault(row[0], {})[row[1]] = self._statistic(metric, int(row[2]), list(row[3:]))
        return [CumulativePoint(day, stats) for day, stats in sorted(points.items())]
