"""The verdict on one experiment: from the event log to a JSON-ready report (the CLI and the dashboard show it).

    build_report(client, experiment)  ->  dict (see docs/reports.md for every field)
Steps: metric sums per arm (metrics.py; from aggregates.py's per-unit rows unless exact=True) -> the engine
(stats.analyze) -> SRM -> guardrails -> the verdict; plus the cumulative lift of the primary metric per daily
look, the daily traffic per arm and the offline-vs-online table (experiments/offline_compare.py).

Decisions, and why:
- An SRM alert (p < 0.001) withholds the verdict: a skewed split means units are lost selectively, and no
  test can undo that bias. Lifts are still shown, marked as not to be trusted.
- Multiple testing: the primary metric is corrected across treatment arms only (it is the one question the
  experiment was designed for); secondary and custom metrics form a second family, corrected across
  metrics x arms (Holm by default). Guardrails are not corrected: a correction would make them more lenient.
- With `design.sequential: true` decisions use the always-valid interval and p-value (safe to look daily);
  otherwise the fixed-horizon test, valid only at the planned end.
- A guardrail is a non-inferiority test against its margin: the harm (the change in the metric's bad
  direction) must be shown below the margin, i.e. the harm's upper confidence bound (always-valid when the
  design is sequential) is under it. `pass` then; `fail` when the lower bound is above the margin (shown
  worse); `inconclusive` otherwise, with the units it would need. Ship needs every guardrail to pass, unless
  the YAML says `guardrails_policy: warn`. latency_p95 gets a distribution-free interval from order
  statistics of each arm's latencies (n = the arm's units, conservative when a unit has many searches).
- With `design.cuped`, the primary metric is decided on the CUPED-adjusted estimate (as pre-registered):
  the verdict, its sequential test and the daily chart; the plain estimate is shown beside it.
- An arm whose estimates are too imprecise for the normal approximation, or without events, gets no verdict:
  `insufficient_data`, with what is missing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone

from experiments import metrics as m
from experiments.custom_metrics import definitions
from experiments.aggregates import collect_data
from experiments.offline_compare import offline_comparison
from experiments.stats import MetricSpec, AnalysisSettings, analyze, sequential_test, z_test, welch_t_test
from experiments.stats.cuped import cuped_adjust, cuped_test
from experiments.designs_report import interleaving_report, shadow_report
from experiments.guardrails import evaluate_guardrails, guardrails_policy
from experiments.stats.sequential import DEFAULT_TUNING

VERDICTS = ("ship", "no_ship", "inconclusive", "insufficient_data", "withheld", "no_data", "invalid")


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _settings(experiment, correction: str = "holm", sequential: bool | None = None) -> AnalysisSettings:
    design = experiment.design
    # The confidence sequence is tightest at `tuning` total units: the planned size when the design gives it,
    # never the observed size (tuning on the data would break the always-valid guarantee).
    tuning = design.sample_size * len(experiment.arms) if design.sample_size else DEFAULT_TUNING
    return AnalysisSettings(alpha=design.alpha, sequential=design.sequential if sequential is None else sequential,
                    tuning=tuning, correction=correction, power=design.power)


def _spec(metric: m.MetricDef, relative: bool = True) -> MetricSpec:
    return MetricSpec(metric.name, metric.kind, relative=relative, higher_is_better=metric.higher_is_better)


def _interval(result, prefix: str = "") -> dict:
    if result is None:
        return {}
    return {"lift": result.lift, "ci_low": result.ci_low, "ci_high": result.ci_high, "p_value": result.p_value,
            "method": prefix + result.method}


def _direction(comparison, lift) -> str:
    if comparison.significant is None or lift is None:
        return "unknown"
    if not comparison.significant:
        return "flat"
    return "better" if (lift > 0) == comparison.higher_is_better else "worse"


def _comparisons(analysis, absolute, role: str, metrics: dict) -> list[dict]:
    """Flat rows, one per metric x treatment arm, from the relative and the absolute analyses."""
    rows = []
    absolute_by_key = {(c.metric, c.arm): c for c in absolute.comparisons}
    for c in analysis.comparisons:
        a = absolute_by_key[(c.metric, c.arm)]
        decision = c.decision
        reason = decision.reason or a.decision.reason
        rows.append({
            "metric": c.metric, "label": metrics[c.metric].label, "role": role, "arm": c.arm, "control": c.control,
            "unit": metrics[c.metric].unit, "higher_is_better": c.higher_is_better,
            "control_value": decision.control_value if decision.ok else a.decision.control_value,
            "treatment_value": decision.treatment_value if decision.ok else a.decision.treatment_value,
            "relative": _interval(c.fixed), "relative_sequential": _interval(c.sequential),
            "absolute": _interval(a.fixed), "absolute_sequential": _interval(a.sequential),
            "decision_method": decision.method, "adjusted_p_value": c.adjusted_p_value,
            "significant": c.significant, "direction": _direction(c, decision.lift),
            "probability_to_beat_control": c.bayesian.probability_to_beat_control if c.bayesian else None,
            "achieved_mde": c.achieved_mde, "error": str(decision.error) if decision.error else None,
            "precise": decision.precise, "precision_reason": decision.precision_reason,
            "units_needed": decision.units_needed,
            "reason": reason if not decision.ok else None,
        })
    return rows


def _uses_cuped(experiment, data, name: str) -> bool:
    """The primary metric is decided on its CUPED estimate when the design pre-registered CUPED and the log
    gave the covariate sums of the control arm."""
    return (data.pre_window is not None and name == data.cumulative_metric and data.covariate is not None
            and experiment.control in data.covariate)


def _analyse(experiment, data, names: list[str], role: str, correction: str) -> list[dict]:
    metrics = {n: data.metrics[n] for n in names if data.metrics[n].kind != "quantile"}
    if not metrics:
        return []
    # The planned arms define the comparisons: an arm without traffic still gets a row that says so, and an
    # arm the YAML does not define (warned about in the report) is never compared.
    weights = {a.name: a.weight for a in experiment.arms}
    stats, specs = {}, {}
    for n, d in metrics.items():
        if role == "primary" and _uses_cuped(experiment, data, n):
            stats[n] = {a: s for a, s in data.covariate.items() if a in weights}
            specs[n] = MetricSpec(n, "cuped", relative=True, higher_is_better=d.higher_is_better)
        else:
            stats[n] = {a: s for a, s in data.stats.get(n, {}).items() if a in weights}
            specs[n] = _spec(d)
    relative = analyze(experiment.control, stats, specs, weights=weights, settings=_settings(experiment, correction))
    absolute = analyze(experiment.control, stats, {n: replace(sp, relative=False) for n, sp in specs.items()},
                       weights=weights, settings=_settings(experiment, correction))
    rows = _comparisons(relative, absolute, role, metrics)
    for row in rows:
        row["cuped"] = specs[row["metric"]].kind == "cuped"
    return rows


def _verdict(experiment, data, srm: dict, primary_rows: list[dict], guardrails: list[dict],
             unknown: list[str]) -> dict:
    primary = experiment.metrics.primary
    if primary in unknown:
        return {"status": "invalid", "winner": None, "headline": f"Unknown primary metric {primary!r}.",
                "reasons": [f"Define {primary!r} under custom_metrics or use a built-in: "
                            f"{', '.join(m.BUILTIN_METRICS)}."]}
    if data.metrics[primary].kind == "quantile":
        return {"status": "invalid", "winner": None, "headline": f"{primary!r} cannot be the primary metric.",
                "reasons": [f"{primary} is a per-arm quantile without a unit-level variance: use it as a guardrail "
                            "and choose a rate or mean (e.g. ctr) as primary."]}
    if not data.arms:
        return {"status": "no_data", "winner": None, "headline": "No traffic yet.",
                "reasons": ["No enrolled impressions in the experiment's window."]}
    reasons = []
    if srm.get("alert"):
        return {"status": "withheld", "winner": None,
                "headline": "Verdict withheld: sample ratio mismatch.",
                "reasons": [f"Units per arm {srm['observed']} do not match the planned weights "
                            f"(chi-square p = {srm['p_value']:.2g} < {srm['threshold']}). Fix assignment or "
                            "logging before trusting any lift."]}
    if srm.get("error"):
        reasons.append(f"SRM check not possible: {srm.get('reason')}")
    policy = guardrails_policy(experiment)
    winners, losers, short = [], [], []
    for row in primary_rows:
        arm_guards = [g for g in guardrails if g["arm"] == row["arm"]]
        failed = [g for g in arm_guards if g["status"] == "fail"]
        holding = [g for g in arm_guards if g["status"] != "pass"]
        lift = (row["relative_sequential"] if experiment.design.sequential else None) or row["relative"]
        shown = (f"{row['arm']} vs {row['control']} on {primary}{' (CUPED)' if row.get('cuped') else ''}: "
                 + (f"{lift['lift']:+.2%} [{lift['ci_low']:+.2%}, {lift['ci_high']:+.2%}]"
                    if lift.get("lift") is not None and lift.get("ci_low") is not None else "no estimate"))
        if row["error"] or row.get("precise") is False:
            short.append(row["arm"])
            why = row["reason"] or row.get("precision_reason") or "the estimates are too imprecise"
            reasons.append(f"{row['arm']}: insufficient data: {why}")
        elif failed and policy == "block":
            losers.append(row["arm"])
            reasons.append(shown + "; guardrail shown beyond its margin: " + ", ".join(g["metric"] for g in failed))
        elif row["direction"] == "better":
            if holding and policy == "block":
                reasons.append(shown + " (significant), but held back by guardrails not yet shown within their "
                               "margins: " + "; ".join(_holding(g) for g in holding))
            else:
                winners.append((lift["lift"], row["arm"]))
                reasons.append(shown + " (significant)")
        elif row["direction"] == "worse":
            losers.append(row["arm"])
            reasons.append(shown + " (significantly worse)")
        else:
            reasons.append(shown + " (not significant)")
    if policy == "warn":
        warned = [g for g in guardrails if g["status"] != "pass"]
        if warned:
            reasons.append("Guardrails not shown safe (policy warn: not blocking): " +
                           "; ".join(_holding(g) for g in warned))
    if winners:
        best = max(winners)[1]
        return {"status": "ship", "winner": best, "headline": f"Ship {best}: it beats {experiment.control}.",
                "reasons": reasons}
    if losers and len(losers) == len(primary_rows):
        return {"status": "no_ship", "winner": None,
                "headline": f"Do not ship: no arm beats {experiment.control}.", "reasons": reasons}
    if short and len(short) == len(primary_rows):
        return {"status": "insufficient_data", "winner": None,
                "headline": "Insufficient data: no verdict yet.", "reasons": reasons}
    return {"status": "inconclusive", "winner": None, "headline": "No significant difference yet.",
            "reasons": reasons}


def _holding(g: dict) -> str:
    f = (lambda v: f"{v:+.1%}") if g["scale"] == "relative" else (lambda v: f"{v:+.4g}")
    if g["harm_upper"] is None:
        return f"{g['metric']} ({g['arm']}): {g['reason'] or 'no interval yet'}"
    need = (f", about {g['units_needed']:,} units in total to clear" if g.get("units_needed") else
            ", cannot clear at the current estimate" if g["status"] != "fail" else "")
    return (f"{g['metric']} ({g['arm']}): harm {f(g['harm'])}, upper bound {f(g['harm_upper'])} vs margin "
            f"{f(g['limit'])}{need}")


def _cumulative(experiment, data) -> dict:
    name = data.cumulative_metric
    if not name:
        return {"metric": None, "points": []}
    test = welch_t_test if data.metrics[name].kind == "mean" else z_test
    settings = _settings(experiment)
    cuped = _uses_cuped(experiment, data, name)
    points = []
    for point in data.cumulative:
        stats = point.covariate if cuped and point.covariate else point.stats
        control = stats.get(experiment.control)
        for arm, stat in stats.items():
            if arm == experiment.control or control is None:
                continue
            if cuped and point.covariate:
                fixed = cuped_test(control, stat, relative=True, alpha=settings.alpha, test="z")
                seq = cuped_test(control, stat, relative=True, alpha=settings.alpha, test="sequential",
                                 tuning=settings.tuning)
            else:
                fixed = test(control, stat, relative=True, alpha=settings.alpha)
                seq = sequential_test(control, stat, relative=True, alpha=settings.alpha, tuning=settings.tuning)
            points.append({"day": point.day.isoformat(), "arm": arm, "units": control.n + stat.n,
                           "estimate": fixed.lift, "ci_low": fixed.ci_low, "ci_high": fixed.ci_high,
                           "seq_low": seq.ci_low, "seq_high": seq.ci_high, "seq_p_value": seq.p_value,
                           "reason": fixed.reason})
    return {"metric": name, "cuped": cuped, "points": points}


def _cuped(experiment, data) -> dict | None:
    """The primary metric adjusted with its pre-period covariate (design.cuped), beside the plain test; None when
    the design asks for no CUPED. The verdict uses the adjusted test (as pre-registered)."""
    if data.pre_window is None:
        return None
    name = data.cumulative_metric
    out = {"metric": name, "pre_period": {"start": _iso(data.pre_window[0]), "end": _iso(data.pre_window[1]),
                                          "days": (data.pre_window[1] - data.pre_window[0]).days},
           "method": "regression adjustment on the linearised metric, covariates: pre-period value (0 without "
                     "data) and a has-pre-data indicator (Deng et al. 2013)", "comparisons": [], "reason": None}
    covariate = data.covariate or {}
    if name is None or experiment.control not in covariate:
        out["reason"] = ("No units in the control arm yet." if name else
                         "The primary metric is unknown or not a ratio or mean, so there is nothing to adjust.")
        return out
    settings = _settings(experiment)
    test = welch_t_test if data.metrics[name].kind == "mean" else z_test
    control = covariate[experiment.control]
    for arm, sums in covariate.items():
        if arm == experiment.control:
            continue
        adj = cuped_adjust(control, sums)
        row = {"arm": arm, "units": {experiment.control: control.n, arm: sums.n},
               "units_with_pre_data": {experiment.control: int(control.z_sum), arm: int(sums.z_sum)},
               "covariates": list(adj.covariates), "theta": list(adj.theta),
               "variance_reduction": adj.variance_reduction, "reason": adj.reason}
        pairs = [("plain", adj.plain_control, adj.plain_treatment), ("cuped", adj.control, adj.treatment)]
        for label, c, t in pairs:
            for key, relative in (("relative", True), ("absolute", False)):
                if c is None or t is None:
                    row[f"{label}_{key}"] = {}
                    continue
                prefix = "cuped_" if label == "cuped" else ""
                row[f"{label}_{key}"] = _interval(test(c, t, relative=relative, alpha=settings.alpha), prefix)
                if settings.sequential:
                    row[f"{label}_{key}_sequential"] = _interval(sequential_test(
                        c, t, relative=relative, alpha=settings.alpha, tuning=settings.tuning), prefix)
        out["comparisons"].append(row)
    return out


def build_report(client, experiment, *, custom: dict[str, m.MetricDef] | None = None, database: str = "abgate",
                 dwell_threshold: float = m.DEFAULT_DWELL_THRESHOLD_S, correction: str = "holm",
                 now: datetime | None = None, **options) -> dict:
    """The full report of an experiment (schema.Experiment), JSON-ready; options: collect_data's (exact, ...)."""
    design = getattr(experiment.design, "type", None) or "ab"
    if design == "interleaving":
        return interleaving_report(client, experiment, database=database, now=now)
    if design == "shadow":
        return shadow_report(client, experiment, database=database, now=now)
    if custom is None:
        custom = definitions(list(getattr(experiment, "custom_metrics", ())))
    spec = experiment.metrics
    primary, secondary = [spec.primary], [s for s in spec.secondary if s != spec.primary]
    secondary += [c for c in (custom or {}) if c not in secondary and c != spec.primary]
    guard = [g.metric for g in spec.guardrails]
    metrics, unknown = m.resolve_metrics(primary + secondary + guard, custom)
    charted = spec.primary if spec.primary in metrics else None
    data, source = collect_data(client, experiment, metrics=metrics, database=database, now=now,
                                dwell_threshold=dwell_threshold, cumulative_metric=charted, **options)
    known = [n for n in secondary if n in metrics]
    primary_rows = _analyse(experiment, data, [n for n in primary if n in metrics], "primary", correction)
    secondary_rows = _analyse(experiment, data, known, "secondary", correction)
    guard_only = [n for n in dict.fromkeys(guard) if n in metrics and n not in primary + known]
    guard_rows = _analyse(experiment, data, guard_only, "guardrail", "none")
    rows = primary_rows + secondary_rows + guard_rows
    analysis = analyze(experiment.control, {}, {}, units={a: s.units for a, s in data.arms.items()},
                       weights={a.name: a.weight for a in experiment.arms})
    srm = analysis.srm.to_dict() if data.arms else {"alert": None, "error": "no_units", "observed": {},
                                                    "reason": "No units yet.", "p_value": None}
    srm["status"] = "alert" if srm.get("alert") else ("unavailable" if srm.get("error") else "ok")
    guardrails = evaluate_guardrails(experiment, data, rows, _settings(experiment))
    verdict = _verdict(experiment, data, srm, primary_rows, guardrails, unknown)
    offline = offline_comparison(client, experiment, data, rows, database=database)
    verdict["reasons"] += [f"Offline vs online disagree for {c['arm']}: {c['note']}."
                           for c in offline["comparisons"] if c["disagreement"]]
    unexpected = sorted(set(data.arms) - {a.name for a in experiment.arms})
    return {
        "design": "ab",
        "experiment": {"name": experiment.name, "description": experiment.description, "owner": experiment.owner,
                       "status": experiment.status, "unit": experiment.unit, "control": experiment.control,
                       "arms": [{"name": a.name, "weight": a.weight} for a in experiment.arms],
                       "primary": spec.primary, "source": experiment.source},
        "window": {"start": _iso(data.window[0]), "end": _iso(data.window[1])},
        "generated_at": _iso(datetime.now(timezone.utc)),
        "source": source,
        "settings": {"alpha": experiment.design.alpha, "sequential": experiment.design.sequential,
                     "correction": correction, "tuning": _settings(experiment).tuning,
                     "dwell_threshold_s": dwell_threshold, "srm_threshold": 0.001},
        "verdict": verdict,
        "srm": srm,
        "traffic": {"units": sum(a.units for a in data.arms.values()), "impressions": data.total_impressions,
                    "arms": {a: {"units": s.units, "impressions": s.impressions, "latency_p95_ms": s.latency_p95,
                                 "encoder_checksums": list(s.encoder_checksums),
                                 "index_checksums": list(s.index_checksums)} for a, s in data.arms.items()}},
        "metrics": {name: d.to_dict() for name, d in metrics.items()},
        "comparisons": rows,
        "guardrails": guardrails,
        "guardrails_policy": guardrails_policy(experiment),
        "offline": offline,
        "daily": data.daily,
        "cumulative": _cumulative(experiment, data),
        "cuped": _cuped(experiment, data),
        "unknown_metrics": unknown,
        "warnings": [f"impressions logged for arm(s) {unexpected} that the experiment does not define"]
        if unexpected else [],
    }
