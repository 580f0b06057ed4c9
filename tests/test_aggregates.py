"""Per-unit aggregates (experiments/aggregates.py) on real chdb: the report they give equals the raw-event
report to 1e-9 (custom metrics, CUPED, daily looks and the window included), replays and late feedback count
once, a changed definition builds its own rows, `abgate db backfill` resumes, and an old store migrates."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from report_compare import compare as _compare
from stores import STORES, drop_server_database, store_dsn

from experiments.report import build_report
from experiments.schema import parse_experiment
from gateway import cli
from gateway.eventlog import store, tables
from metric_events import START, experiment_config, generate

DAYS = 4
CUSTOM = [
    {"name": "top3_clicks", "numerator": {"event": "click", "filters": [{"field": "position", "op": "<=", "value": 3}]},
     "denominator": {"event": "impression"}},
    {"name": "value_capped", "numerator": {"event": "conversion", "aggregate": "sum", "cap": 20}},
    {"name": "latency_capped", "numerator": {"event": "impression", "aggregate": "sum", "cap": 15}},
]


@pytest.fixture(scope="module", params=STORES)
def client(tmp_path_factory, request):
    dsn = store_dsn(request.param, tmp_path_factory.mktemp("aggregates-store"), "abgate")
    client = store.connect(dsn)
    tables.migrate(client)
    log = generate("agg", {"control": 0.25, "treatment": 0.33}, units=700, days=DAYS, seed=21)
    log.insert(client)
    # the same units before the start, in other traffic: CUPED's pre-period covariate
    generate("before", {"control": 0.25, "treatment": 0.25}, units=700, days=7, seed=21,
             start=START - timedelta(days=7), noise=False).insert(client)
    client.log = log
    client.dsn_text = dsn
    yield client
    client.close()
    drop_server_database(request.param, dsn)


def _experiment(name="agg", **extra):
    config = experiment_config(name, days=DAYS, primary="mrr", secondary=[
        "ctr", "click_share", "clicks_per_search", "abandonment", "dwell_success", "conversions",
        "zero_result_rate"], custom_metrics=CUSTOM, **extra)
    config["design"]["cuped"] = {"pre_days": 7}
    exp, problems = parse_experiment(config)
    assert not problems, problems
    return exp


def test_aggregate_report_equals_the_raw_event_report(client):
    exp = _experiment()
    exact = build_report(client, exp, exact=True)
    fast = build_report(client, exp)
    assert exact["source"]["path"] == "raw events"
    assert fast["source"]["path"] == "aggregates" and fast["source"]["refresh"]["mode"] == "build"
    assert fast["cuped"] is not None and fast["cumulative"]["points"], "the fixture must exercise CUPED and looks"
    assert {"top3_clicks", "value_capped", "latency_capped"} <= {r["metric"] for r in fast["comparisons"]}
    _compare(exact, fast)
    units = client.query("SELECT count() FROM abgate.unit_aggregates FINAL WHERE experiment = 'agg'").result_rows
    assert units[0][0] == exact["traffic"]["units"]  # one row per analysed unit, whatever its events


def test_replayed_batch_and_late_feedback_count_once(client):
    exp = _experiment()
    build_report(client, exp)  # current
    log = client.log
    replay = log.impressions[:200] + [f for f in log.feedback[:300]]
    from metric_events import EventLog
    EventLog(impressions=[e for e in replay if hasattr(e, "doc_ids")],
             feedback=[e for e in replay if not hasattr(e, "doc_ids")]).insert(client)
    # a late click on an impression that had none: it must count exactly once
    from gateway.eventlog.events import Feedback
    clicked = {f.impression_id for f in log.feedback}
    late = next(i for i in log.impressions if i.impression_id not in clicked and i.doc_ids and i.enrolled
                and i.experiment == "agg" and START <= i.ts < START + timedelta(days=DAYS))
    event = Feedback("late-click-1", late.impression_id, late.ts + timedelta(minutes=1), "agg", late.arm,
                     late.unit_id, "click", late.doc_ids[0], 1, 1.0)
    for _ in range(2):  # the late click itself replayed too
        EventLog(feedback=[event]).insert(client)
    fast = build_report(client, exp)
    assert fast["source"]["refresh"]["mode"] == "incremental" and fast["source"]["refresh"]["units"] >= 1
    exact = build_report(client, exp, exact=True)
    _compare(exact, fast)


def test_changed_definition_builds_its_own_rows(client):
    exp = _experiment()
    default = build_report(client, exp)
    stricter = build_report(client, exp, dwell_threshold=60.0)
    assert stricter["source"]["refresh"]["spec"] != default["source"]["refresh"]["spec"]
    assert stricter["source"]["refresh"]["mode"] == "build"
    _compare(build_report(client, exp, dwell_threshold=60.0, exact=True), stricter)
    dwell = {r["metric"]: r for r in stricter["comparisons"]}["dwell_success"]
    assert dwell != {r["metric"]: r for r in default["comparisons"]}["dwell_success"]


def test_report_before_the_latest_events_reads_raw_events(client):
    exp = _experiment()
    now = START + timedelta(days=2)
    report = build_report(client, exp, now=now)
    assert report["source"]["path"] == "raw events" and "window" in report["source"]["reason"]
    _compare(build_report(client, exp, now=now, exact=True), report)


def test_backfill_resumes_and_reports_progress(client, capsys, tmp_path):
    exp = _experiment(name="agg")
    folder = tmp_path / "exps"
    folder.mkdir()
    import yaml
    config = experiment_config("agg", days=DAYS, primary="mrr", custom_metrics=CUSTOM)
    (folder / "agg.yaml").write_text(yaml.safe_dump(config))
    del exp
    # an interrupted backfill: state says 3 of 8 buckets done
    code = cli.main(["db", "backfill", "agg", "--experiments", str(folder), "--dsn", client.dsn_text,
                     "--buckets", "8", "--rebuild", "--stop-after", "3", "--json"])
    first = json.loads(capsys.readouterr().out)
    assert code == 0 and first["buckets_done"] == 3 and first["buckets"] == 8
    code = cli.main(["db", "backfill", "agg", "--experiments", str(folder), "--dsn", client.dsn_text, "--json"])
    captured = capsys.readouterr()
    second = json.loads(captured.out)
    assert code == 0 and second["buckets_done"] == 8 and second["resumed_at"] == 3
    assert "bucket 8/8" in captured.err and "eta" in captured.err
    for flag, path in (([], "aggregates"), (["--exact"], "raw events")):
        assert cli.main(["report", "agg", "--experiments", str(folder), "--dsn", client.dsn_text, "--json",
                         *flag]) == 0
        assert json.loads(capsys.readouterr().out)["source"]["path"] == path
    assert cli.main(["db", "backfill", "agg", "--experiments", str(folder), "--dsn", client.dsn_text,
                     "--buckets", "0"]) == 2
    assert "--buckets" in capsys.readouterr().err


def test_store_from_the_previous_schema_migrates_in_place(client):
    db = "oldschema"  # a second database in the same store (one embedded store per process)
    client.command(f"DROP DATABASE IF EXISTS {db}")
    for statement in tables.bootstrap_statements(db, None):
        client.command(statement)
    for migration in tables.MIGRATIONS[:4]:  # the schema before the aggregates
        for statement in migration.statements(db, None, 400):
            client.command(statement)
        client.insert(f"{db}.schema_migrations", [[migration.version, migration.name]],
                      column_names=["version", "name"])
    generate("old", units=50, days=2, seed=3, noise=False).insert(client, database=db)
    result = tables.migrate(client, database=db)
    assert result["applied"] == [5]
    exp, problems = parse_experiment(experiment_config("old", days=2))
    assert not problems
    report = build_report(client, exp, database=db)
    assert report["source"]["path"] == "aggregates" and report["traffic"]["units"] == 50
    _compare(build_report(client, exp, database=db, exact=True), report)
    assert tables.migrate(client, database=db)["applied"] == []
    client.command(f"DROP DATABASE {db}")


def test_gateway_refresher_keeps_them_current(client):
    """The gateway's timer (dashboards/refresher.py) refreshes what it serves; a new click is one unit's work."""
    from dashboards.refresher import AggregateRefresher
    from gateway.eventlog.events import Feedback
    from metric_events import EventLog

    exp = _experiment()
    refresher = AggregateRefresher(lambda: {"agg": exp}, lambda: client, interval_s=3600)
    refresher.refresh_once()  # whatever the earlier tests left: now current
    assert refresher.refresh_once()["agg"]["units"] == 0  # nothing new: nothing recomputed
    imp = next(i for i in client.log.impressions if i.enrolled and i.doc_ids and i.experiment == "agg"
               and START <= i.ts < START + timedelta(days=DAYS))
    EventLog(feedback=[Feedback("refresher-click", imp.impression_id, imp.ts + timedelta(seconds=5), "agg", imp.arm,
                                imp.unit_id, "click", imp.doc_ids[-1], len(imp.doc_ids), 1.0)]).insert(client)
    done = refresher.refresh_once()["agg"]
    assert done["mode"] == "incremental" and done["units"] == 1
    _compare(build_report(client, exp, exact=True), build_report(client, exp))


def test_fresh_aggregates_are_read_without_a_refresh(client):
    """The dashboard of a gateway whose refresher runs reads aggregates refreshed within max_lag_s as they are,
    and says as of when; a late event waits for the next refresh, then counts."""
    from gateway.eventlog.events import Feedback
    from metric_events import EventLog

    exp = _experiment()
    current = build_report(client, exp)
    imp = next(i for i in client.log.impressions if i.enrolled and i.doc_ids and i.experiment == "agg"
               and START <= i.ts < START + timedelta(days=DAYS) and i.arm == "control")
    EventLog(feedback=[Feedback("lag-click", imp.impression_id, imp.ts + timedelta(seconds=7), "agg", imp.arm,
                                imp.unit_id, "click", imp.doc_ids[1], 2, 1.0)]).insert(client)
    lagging = build_report(client, exp, max_lag_s=3600)
    assert lagging["source"]["refresh"]["mode"] == "current" and lagging["source"]["refresh"]["as_of"]
    assert lagging["traffic"] == current["traffic"] and lagging["comparisons"] == current["comparisons"]
    fresh = build_report(client, exp)  # no allowance: the click counts
    assert fresh["source"]["refresh"]["mode"] == "incremental" and fresh["source"]["refresh"]["units"] == 1
    _compare(build_report(client, exp, exact=True), fresh)
