"""CUPED from the event log, on the real embedded ClickHouse engine (chdb).

Each user has a lasting click propensity. Before the start some users search as default traffic (experiment "",
arm "default", not enrolled: what the gateway logs for units outside any experiment) and some in another
experiment; others have no pre-period at all. The report's CUPED row must (1) shrink the interval of the primary
metric, (2) equal a regression adjustment computed with numpy from the raw per-unit values of the same log,
and (3) say plainly when there is no pre-period data.
"""

from __future__ import annotations

import json
import secrets
from datetime import timedelta

import numpy as np
import pytest

from stores import STORES, drop_server_database, store_dsn

from dashboards.pages import render_report
from experiments.report import build_report
from experiments.schema import parse_experiment
from experiments.stats import CupedStatistic, cuped_adjust, z_test
from experiments.stats.cuped import CovariateSums, regression_adjust
from experiments.stats.statistics import Estimate
from gateway.eventlog import store, tables
from gateway.eventlog.events import Feedback, Impression
from metric_events import START, EventLog, experiment_config

DAYS, PRE_DAYS = 4, 14


def _imp(rng, ts, experiment, arm, unit, enrolled):
    return Impression(secrets.token_urlsafe(12), ts, experiment, arm, unit, enrolled, "q",
                      [f"d{i}" for i in range(10)], [1.0 - i / 20 for i in range(10)], 10.0, "e", "i")


def _searches(log, rng, unit, propensity, experiment, arm, enrolled, first_day, days, count):
    """`count` impressions of one unit; each position p is clicked with probability propensity / p."""
    for _ in range(count):
        ts = first_day + timedelta(days=int(rng.integers(0, days)), seconds=int(rng.integers(0, 86_000)))
        imp = _imp(rng, ts, experiment, arm, unit, enrolled)
        log.impressions.append(imp)
        for pos in range(1, 11):
            if rng.random() < propensity / pos:
                log.feedback.append(Feedback(secrets.token_urlsafe(12), imp.impression_id, ts + timedelta(seconds=5),
                                             experiment, arm, unit, "click", f"d{pos - 1}", pos, 1.0))


def make_log(name: str, units: int, seed: int, pre_share: float) -> tuple[EventLog, dict]:
    rng = np.random.default_rng(seed)
    log, truth = EventLog(), {}
    for u in range(units):
        unit = f"{name}-user-{u}"
        arm = "treatment" if rng.random() < 0.5 else "control"
        propensity = float(rng.beta(2, 6)) * (1.1 if arm == "treatment" else 1.0)
        if rng.random() < pre_share:  # pre-period traffic: mostly default traffic, some in another experiment
            other = rng.random() < 0.3
            _searches(log, rng, unit, propensity / (1.1 if arm == "treatment" else 1.0),
                      "older-exp" if other else "", "a" if other else "default", other,
                      START - timedelta(days=PRE_DAYS), PRE_DAYS, int(rng.integers(2, 12)))
        _searches(log, rng, unit, propensity, name, arm, True, START, DAYS, int(rng.integers(1, 10)))
        truth[unit] = arm
    # Outside the pre-period: must not count (older than pre_days, and an impression of a unit nobody enrolled).
    _searches(log, rng, f"{name}-user-0", 0.9, "", "default", False, START - timedelta(days=PRE_DAYS + 5), 3, 5)
    return log, truth


def numpy_reference(log: EventLog, name: str, control: str = "control", treatment: str = "treatment") -> dict:
    """The regression-adjusted CTR lift computed from raw per-unit values: an OLS of each unit's linearised
    CTR contribution on (1, pre-period CTR or 0, has-pre-period indicator), pooled over both arms."""
    clicked = {}
    for f in log.feedback:
        clicked.setdefault(f.impression_id, set()).add(f.doc_id)
    pre_lo, start = START - timedelta(days=PRE_DAYS), START
    per = {}
    for imp in log.impressions:
        c = len(clicked.get(imp.impression_id, ()))
        if imp.experiment == name and imp.enrolled and START <= imp.ts < START + timedelta(days=DAYS):
            row = per.setdefault(imp.unit_id, {"arm": imp.arm, "m": 0.0, "d": 0.0, "pm": 0.0, "pd": 0.0})
            row["arm"] = imp.arm
            row["m"] += c
            row["d"] += 1
    for imp in log.impressions:
        if pre_lo <= imp.ts < start and imp.unit_id in per:
            per[imp.unit_id]["pm"] += len(clicked.get(imp.impression_id, ()))
            per[imp.unit_id]["pd"] += 1
    rows = list(per.values())
    arm = np.array([r["arm"] for r in rows])
    m, d = (np.array([r[k] for r in rows]) for k in ("m", "d"))
    z = np.array([r["pd"] > 0 for r in rows], dtype=float)
    x = np.array([r["pm"] / r["pd"] if r["pd"] else 0.0 for r in rows])
    phi, ratio = np.zeros(len(rows)), {}
    for a in (control, treatment):
        sel = arm == a
        ratio[a] = m[sel].sum() / d[sel].sum()
        phi[sel] = (m[sel] - ratio[a] * d[sel]) / d[sel].mean()
    design = np.column_stack([np.ones(len(rows)), x, z])
    theta = np.linalg.lstsq(design, phi, rcond=None)[0][1:]
    w = design[:, 1:]
    out = {"theta": theta, "units_with_pre": {a: int(z[arm == a].sum()) for a in (control, treatment)}}
    for a in (control, treatment):
        sel = arm == a
        adjusted = phi[sel] - w[sel] @ theta
        out[a] = Estimate(int(sel.sum()), ratio[a] - (w[sel].mean(0) - w.mean(0)) @ theta, adjusted.var(ddof=1))
        out[a + "_plain"] = Estimate(int(sel.sum()), ratio[a], phi[sel].var(ddof=1))
    return out


@pytest.fixture(scope="module", params=STORES)
def client(tmp_path_factory, request):
    dsn = store_dsn(request.param, tmp_path_factory.mktemp('cuped-store'), "abgate")  # the report queries name the abgate database
    client = store.connect(dsn)
    tables.migrate(client)
    logs = {"cup": make_log("cup", 1500, seed=21, pre_share=0.8)[0],
            "nopre": make_log("nopre", 300, seed=22, pre_share=0.0)[0]}
    for log in logs.values():
        log.insert(client)
    client.logs = logs
    yield client
    client.close()
    drop_server_database(request.param, dsn)


def _report(client, name, **design):
    exp, problems = parse_experiment(experiment_config(
        name, days=DAYS, sequential=False, design={"alpha": 0.05, "mde": 0.02, "cuped": {"pre_days": PRE_DAYS},
                                                   **design}))
    assert not problems, problems
    report = build_report(client, exp)
    json.dumps(report, allow_nan=False)
    return report


def test_pre_period_covariate_shrinks_the_interval_and_matches_numpy(client):
    report = _report(client, "cup")
    cuped = report["cuped"]
    assert cuped["metric"] == "ctr" and cuped["pre_period"]["days"] == PRE_DAYS and cuped["reason"] is None
    row = cuped["comparisons"][0]
    assert row["arm"] == "treatment" and row["covariates"] == ["pre_value", "has_pre_data"]
    plain, adjusted = row["plain_absolute"], row["cuped_absolute"]
    # A per-user propensity seen before the start explains much of the in-experiment CTR variance.
    assert row["variance_reduction"] > 0.2
    assert adjusted["ci_high"] - adjusted["ci_low"] < 0.9 * (plain["ci_high"] - plain["ci_low"])
    # The design pre-registered CUPED: the primary comparison (and so the verdict) is the adjusted one.
    primary = next(r for r in report["comparisons"] if r["metric"] == "ctr")
    assert primary["cuped"] and primary["decision_method"].startswith("cuped_")
    assert primary["relative"]["lift"] == pytest.approx(row["cuped_relative"]["lift"], rel=1e-9)
    assert primary["absolute"]["lift"] == pytest.approx(row["cuped_absolute"]["lift"], rel=1e-9)
    assert report["cumulative"]["cuped"]
    last = report["cumulative"]["points"][-1]  # the daily chart's last look is the verdict's estimate
    assert last["estimate"] == pytest.approx(row["cuped_relative"]["lift"], rel=1e-9)

    ref = numpy_reference(client.logs["cup"], "cup")
    assert row["units_with_pre_data"] == ref["units_with_pre"]
    assert row["theta"] == pytest.approx(list(ref["theta"]), rel=1e-9)
    for key, relative in (("cuped_absolute", False), ("cuped_relative", True)):
        expected = z_test(ref["control"], ref["treatment"], relative=relative)
        for field in ("lift", "ci_low", "ci_high", "p_value"):
            assert row[key][field] == pytest.approx(getattr(expected, field), rel=1e-9, abs=1e-12), (key, field)
    expected_plain = z_test(ref["control_plain"], ref["treatment_plain"])
    assert plain["ci_low"] == pytest.approx(expected_plain.ci_low, rel=1e-9)
    page = render_report(report)  # the dashboard shows the adjusted interval beside the plain one
    assert "id='cuped'" in page and f"variance −{row['variance_reduction']:.0%}" in page
    reduction = 1 - (ref["control"].estimate_variance + ref["treatment"].estimate_variance) / (
        ref["control_plain"].estimate_variance + ref["treatment_plain"].estimate_variance)
    assert row["variance_reduction"] == pytest.approx(reduction, rel=1e-9)


def test_no_pre_period_data_is_said_plainly(client):
    cuped = _report(client, "nopre")["cuped"]
    row = cuped["comparisons"][0]
    assert row["cuped_absolute"] == {} and row["variance_reduction"] is None
    assert "pre-period" in row["reason"] and row["units_with_pre_data"] == {"control": 0, "treatment": 0}
    # The plain test is still there, with the values of the unadjusted z-test on the same per-unit data.
    ref = numpy_reference(client.logs["nopre"], "nopre")
    expected = z_test(ref["control_plain"], ref["treatment_plain"])
    for field in ("lift", "ci_low", "ci_high"):
        assert row["plain_absolute"][field] == pytest.approx(getattr(expected, field), rel=1e-9, abs=1e-12), field
    assert row["plain_absolute"]["ci_low"] < row["plain_absolute"]["lift"] < row["plain_absolute"]["ci_high"]
    assert "No unit has impressions in the pre-period" in render_report(_report(client, "nopre"))


def test_without_cuped_in_the_design_there_is_no_cuped_section(client):
    exp, problems = parse_experiment(experiment_config("cup", days=DAYS))
    assert not problems
    assert build_report(client, exp)["cuped"] is None


def test_a_mean_with_a_covariate_goes_through_the_one_regression_model():
    """d = 1 and every unit with pre-period data: a CupedStatistic and the CovariateSums it stands for adjust
    identically (the indicator is constant and dropped), because the engine has one CUPED path."""
    rng = np.random.default_rng(3)
    sums = {}
    for arm, shift in (("c", 0.0), ("t", 0.3)):
        x = rng.normal(5, 2, 400)
        y = 0.8 * x + rng.normal(shift, 1, 400)
        sums[arm] = (CovariateSums(400, y.sum(), (y * y).sum(), 400.0, 400.0, y.sum(), x.sum(), (x * x).sum(), 400.0,
                                   x.sum(), (x * y).sum(), x.sum(), y.sum(), 400.0),
                     CupedStatistic(400, y.sum(), (y * y).sum(), x.sum(), (x * x).sum(), (x * y).sum()))
    adj = regression_adjust(sums["c"][0], sums["t"][0])
    from_mean = cuped_adjust(sums["c"][1], sums["t"][1])
    assert adj.covariates == from_mean.covariates == ("pre_value",)
    assert from_mean.theta == adj.theta
    assert from_mean.treatment == adj.treatment and from_mean.control == adj.control
    assert from_mean.variance_reduction == adj.variance_reduction > 0.5


def test_cuped_design_is_validated():
    base = experiment_config("v", days=DAYS)
    for cuped, words in (({"pre_days": 0}, "1 to 365"), ({"days": 3}, "not a known field"), (7, "mapping")):
        _, problems = parse_experiment({**base, "design": {"mde": 0.02, "cuped": cuped}})
        assert any(words in p.message for p in problems), (cuped, problems)
    _, problems = parse_experiment({**base, "unit": "session", "design": {"mde": 0.02, "cuped": {"pre_days": 7}}})
    assert any("unit: user" in p.message for p in problems)
