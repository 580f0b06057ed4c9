"""Metric SQL on the real embedded ClickHouse engine (chdb) against a numpy computation of the same log."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone

import numpy as np
import pytest

from stores import STORES, drop_server_database, store_dsn

from experiments import metrics as m
from experiments.metrics_sql import collect
from experiments.custom_metrics import definitions, parse_custom_metrics
from experiments.schema import parse_experiment
from gateway.eventlog import store, tables
from metric_events import START, experiment_config, generate, reference

DAYS = 3


@pytest.fixture(scope="module", params=STORES)
def client(tmp_path_factory, request):
    dsn = store_dsn(request.param, tmp_path_factory.mktemp('metrics-store'), "abgate")  # the report queries name the abgate database
    client = store.connect(dsn)
    tables.migrate(client)
    yield client
    client.close()
    drop_server_database(request.param, dsn)


@pytest.fixture(scope="module")
def log(client):
    log = generate("exp", units=300, days=DAYS, seed=7)
    log.insert(client)
    return log


def _experiment(**kw):
    exp, problems = parse_experiment(experiment_config("exp", days=DAYS, **kw))
    assert not problems, problems
    return exp


def _collect(client, exp, metrics=None, **kw):
    names = metrics or list(m.BUILTIN_METRICS)
    defs, unknown = m.resolve_metrics(names)
    assert not unknown
    return collect(client, exp, metrics=defs, **kw)


def test_builtin_metrics_match_numpy(client, log):
    exp = _experiment()
    data = _collect(client, exp, cumulative_metric="ctr")
    ref = reference(log, "exp", START, START + timedelta(days=DAYS))
    assert set(data.stats) == set(ref["metrics"])
    for name, per_arm in ref["metrics"].items():
        for arm, sums in per_arm.items():
            got = data.stats[name][arm]
            fields = [got.n, *(vars(got)[k] for k in list(vars(got))[1:])]
            assert fields == pytest.approx(list(sums), rel=1e-9, abs=1e-9), (name, arm)
    for arm, summary in data.arms.items():
        assert summary.units == ref["units"][arm]
        assert summary.impressions == ref["impressions"][arm]
        lat = np.sort(ref["latency_p95"][arm])
        assert summary.latency_p95 == pytest.approx(float(lat[int(0.95 * len(lat))]), rel=1e-6)
        assert summary.encoder_checksums == (f"enc-{arm}",)


def test_duplicates_are_collapsed(client, log):
    """The replayed copies are in the raw table; the metrics must not see them."""
    assert log.duplicates
    raw = client.query("SELECT count() FROM abgate.impressions WHERE experiment = 'exp'").result_rows[0][0]
    assert raw > len([i for i in log.impressions if i.experiment == "exp"])
    data = _collect(client, _experiment(), ["ctr"])
    assert data.total_impressions == sum(reference(log, "exp", START, START + timedelta(days=DAYS))
                                         ["impressions"].values())


def test_cumulative_series_equals_a_report_run_each_day(client, log):
    exp = _experiment()
    data = _collect(client, exp, ["ctr", "clicks_per_search"], cumulative_metric="clicks_per_search")
    assert [p.day for p in data.cumulative] == [START.date() + timedelta(days=d) for d in range(DAYS)]
    for point in data.cumulative:
        end = START + timedelta(days=(point.day - START.date()).days + 1)
        ref = reference(log, "exp", START, end)["metrics"]["clicks_per_search"]
        for arm, sums in ref.items():
            got = point.stats[arm]
            assert [got.n, got.sum, got.sum_squares] == pytest.approx(list(sums), rel=1e-9)
    for arm, last in data.cumulative[-1].stats.items():  # the last look is the final analysis
        final = data.stats["clicks_per_search"][arm]
        assert [last.n, last.sum, last.sum_squares] == pytest.approx([final.n, final.sum, final.sum_squares],
                                                                     rel=1e-12)


def test_daily_counts(client, log):
    data = _collect(client, _experiment(), ["ctr"])
    for row in data.daily:
        day = datetime.combine(date.fromisoformat(row["day"]), time(), tzinfo=timezone.utc)
        imps = {i.impression_id: i for i in log.impressions if i.experiment == "exp" and i.enrolled
                and i.arm == row["arm"] and day <= i.ts < day + timedelta(days=1)}
        assert row["impressions"] == len(imps)
        assert row["units"] == len({i.unit_id for i in imps.values()})


def test_custom_metrics(client, log):
    custom, problems = parse_custom_metrics([
        {"name": "top3_ctr", "numerator": {"event": "click", "filters": [{"field": "position", "op": "<=",
                                                                          "value": 3}]},
         "denominator": {"event": "impression", "filters": [{"field": "results", "op": ">", "value": 0}]}},
        {"name": "conversion_value", "numerator": {"event": "conversion", "aggregate": "sum"}},
    ])
    assert not problems
    defs = definitions(custom)
    data = collect(client, _experiment(), metrics=defs)
    end = START + timedelta(days=DAYS)
    imps = {i.impression_id: i for i in log.impressions if i.experiment == "exp" and i.enrolled
            and START <= i.ts < end}
    fb = {f.event_id: f for f in log.feedback if f.impression_id in imps}.values()
    for arm in ("control", "treatment"):
        units = sorted({i.unit_id for i in imps.values() if i.arm == arm})
        num = np.array([sum(1 for f in fb if f.unit_id == u and f.type == "click" and f.position <= 3)
                        for u in units], float)
        den = np.array([sum(1 for i in imps.values() if i.unit_id == u and i.doc_ids) for u in units], float)
        got = data.stats["top3_ctr"][arm]
        assert [got.n, got.m_sum, got.m_sum_squares, got.d_sum, got.d_sum_squares, got.md_sum] == pytest.approx(
            [len(units), num.sum(), (num ** 2).sum(), den.sum(), (den ** 2).sum(), (num * den).sum()])
        value = np.array([sum(f.value for f in fb if f.unit_id == u and f.type == "conversion") for u in units])
        conv = data.stats["conversion_value"][arm]
        assert [conv.n, conv.sum, conv.sum_squares] == pytest.approx([len(units), value.sum(), (value ** 2).sum()])


def test_custom_metric_problems_are_located():
    _, problems = parse_custom_metrics([
        {"name": "ctr", "numerator": {"event": "click"}},
        {"name": "x", "numerator": {"event": "purchase"}},
        {"name": "y", "numerator": {"event": "click", "filters": [{"field": "latency_ms", "op": "<", "value": 1}]}},
        {"name": "z", "numerator": {"event": "click", "filters": [{"field": "position", "op": "~", "value": 1}]}},
    ])
    fields = {p.field: p.message for p in problems}
    assert "already defined" in fields["custom_metrics[0].name"]
    assert "must be one of" in fields["custom_metrics[1].numerator.event"]
    assert "cannot filter click events" in fields["custom_metrics[2].numerator.filters[0].field"]
    assert "not an operator" in fields["custom_metrics[3].numerator.filters[0].op"]


def test_no_traffic_gives_empty_results(client):
    exp, _ = parse_experiment(experiment_config("empty-exp", days=DAYS))
    data = _collect(client, exp, cumulative_metric="ctr")
    assert data.stats["ctr"] == {} and data.arms == {} and data.daily == [] and data.cumulative == []


def test_unknown_metric_is_reported():
    found, unknown = m.resolve_metrics(["ctr", "revenue_per_user", "ctr"])
    assert list(found) == ["ctr"] and unknown == ["revenue_per_user"]


def test_custom_metric_errors_in_yaml_have_file_and_line(tmp_path):
    import yaml

    from experiments.loader import load_file

    data = experiment_config("exp", days=DAYS)
    data["custom_metrics"] = [{"name": "top3", "numerator": {"event": "click", "filters": [
        {"field": "rank", "op": "<=", "value": 3}]}}]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    experiment, errors = load_file(path)
    assert experiment is None
    (error,) = errors
    assert error.field == "custom_metrics[0].numerator.filters[0].field" and "'rank' cannot filter" in error.message
    assert error.line is not None and "rank" in path.read_text().splitlines()[error.line - 1]
    data["custom_metrics"][0]["numerator"]["filters"][0]["field"] = "position"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    experiment, errors = load_file(path)
    assert not errors and experiment.custom_metrics[0].name == "top3"


def test_look_days_are_daily_then_sampled():
    first = date(2026, 1, 1)
    assert m.look_days(first, first + timedelta(days=2)) == [first + timedelta(days=d) for d in range(3)]
    long = m.look_days(first, first + timedelta(days=400))
    assert len(long) <= m.MAX_LOOKS and long[-1] == first + timedelta(days=400)


def test_custom_metric_cap_winsorizes_each_value(client):
    """One 1e9 conversion moves the uncapped mean by millions; capped, the unit counts at most the cap."""
    from gateway.eventlog.events import Feedback

    cap_log = generate("capexp", units=60, days=DAYS, seed=11, noise=False)
    target = next(i for i in cap_log.impressions if i.arm == "treatment")
    cap_log.feedback.append(Feedback("huge-conversion", target.impression_id, target.ts, "capexp", target.arm,
                                     target.unit_id, "conversion", "d0", 1, 1e9))
    cap_log.insert(client)
    exp, problems = parse_experiment(experiment_config("capexp", days=DAYS, custom_metrics=[
        {"name": "value_raw", "numerator": {"event": "conversion", "aggregate": "sum"}},
        {"name": "value_capped", "numerator": {"event": "conversion", "aggregate": "sum", "cap": 20}},
        {"name": "latency_capped", "numerator": {"event": "impression", "aggregate": "sum", "cap": 15}},
    ]))
    assert not problems, problems
    data = collect(client, exp, metrics=definitions(list(exp.custom_metrics)))
    for arm in ("control", "treatment"):
        units = sorted({i.unit_id for i in cap_log.impressions if i.arm == arm})
        conv = [f for f in cap_log.feedback if f.type == "conversion" and f.arm == arm]
        capped = np.array([sum(min(f.value, 20) for f in conv if f.unit_id == u) for u in units])
        raw = np.array([sum(f.value for f in conv if f.unit_id == u) for u in units])
        lat = np.array([sum(min(i.latency_ms, 15) for i in cap_log.impressions if i.unit_id == u) for u in units])
        got, unc, lc = (data.stats[n][arm] for n in ("value_capped", "value_raw", "latency_capped"))
        assert [got.n, got.sum, got.sum_squares] == pytest.approx([len(units), capped.sum(), (capped ** 2).sum()])
        assert [unc.n, unc.sum] == pytest.approx([len(units), raw.sum()])
        assert [lc.n, lc.sum, lc.sum_squares] == pytest.approx([len(units), lat.sum(), (lat ** 2).sum()])
    treated = data.stats["value_capped"]["treatment"]
    assert data.stats["value_raw"]["treatment"].sum / treated.n > 1e6  # the outlier, uncapped
    assert treated.sum / treated.n < 20  # the 1e9 conversion counts as 20: the mean stays below the cap
