"""Reports of interleaving and shadow experiments (A/B reports are experiments/report.py's).

Interleaving: clicks on each interleaved impression are credited to the team of their position, except clicks
in the arms' common prefix (the top positions where every arm's own ranking, logged beside the impression, has
the same documents: their team is a coin flip, so they are ignored; Chapelle et al. 2012), unit scores and the
always-valid preference test come from experiments/interleaving.py, the team-balance check withholds the
verdict like SRM does, and each arm's offline NDCG sits beside the online preference.

Shadow: users saw the control; the candidate answered the same queries off the request path. The report
compares the candidate's lists with control's for the same impressions (overlap@k and rank-biased overlap,
Webber, Moffat & Zobel 2010, p = 0.9), its latency quantiles, zero-result rate and errors. It names no
winner: no user saw the candidate, so shadow can only say whether it is safe and how different it is.
"""

from __future__ import annotations

from datetime import datetime, timezone

from experiments.interleaving import UnitScores, common_prefix, credit, preference, team_balance
from experiments.metrics import analysis_window
from experiments.offline_compare import offline_comparison

RBO_P = 0.9


def _iso(value) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _ts(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _window_params(experiment, now: datetime | None) -> tuple[tuple, dict, str]:
    window = analysis_window(experiment.start, experiment.end, now)
    params = {"experiment": experiment.name, "end": _ts(window[1])}
    clause = "ts < {end:DateTime64(3, 'UTC')}"
    if window[0] is not None:
        params["start"] = _ts(window[0])
        clause += " AND ts >= {start:DateTime64(3, 'UTC')}"
    return window, params, clause


def _settings(experiment) -> dict:
    design = experiment.design
    tuning = design.sample_size * 1 if design.sample_size else 5_000
    return {"alpha": design.alpha, "sequential": design.sequential, "tuning": tuning}


def _header(experiment, window, design: str) -> dict:
    return {"experiment": {"name": experiment.name, "description": experiment.description,
                           "owner": experiment.owner, "status": experiment.status, "unit": experiment.unit,
                           "control": experiment.control, "arms": [{"name": a.name} for a in experiment.arms],
                           "primary": "preference" if design == "interleaving" else "overlap", "design": design,
                           "source": experiment.source},
            "design": design, "window": {"start": _iso(window[0]), "end": _iso(window[1])},
            "generated_at": _iso(datetime.now(timezone.utc))}


# -- interleaving ----------------------------------------------------------------------------------------------

def interleaving_report(client, experiment, *, database: str = "abgate", now: datetime | None = None) -> dict:
    window, params, clause = _window_params(experiment, now)
    sql = (f"SELECT i.unit_id, toDate(i.ts) AS day, i.arms, i.teams, i.rankings, "
           f"groupUniqArray(f.position) AS clicked "
           f"FROM (SELECT * FROM {database}.interleavings FINAL WHERE experiment = {{experiment:String}} AND "
           f"{clause}) AS i LEFT JOIN (SELECT impression_id, position FROM {database}.feedback FINAL WHERE "
           f"experiment = {{experiment:String}} AND type = 'click') AS f ON f.impression_id = i.impression_id "
           f"GROUP BY i.impression_id, i.unit_id, day, i.arms, i.teams, i.rankings ORDER BY day "
           f"SETTINGS join_use_nulls = 0")
    rows = client.query(sql, parameters=params).result_rows
    settings = _settings(experiment)
    control = experiment.control
    candidates = [a.name for a in experiment.arms if a.name != control]
    arm_names = [control, *candidates]
    scores = {arm: UnitScores.empty() for arm in candidates}
    first = {arm: 0 for arm in arm_names}
    shown = {arm: 0 for arm in arm_names}
    units, clicked_impressions, points, day = set(), 0, [], None
    clicks_total = clicks_in_prefix = 0
    for unit, row_day, arms, teams, rankings, positions in rows:
        if day is not None and row_day != day:
            points += _look(day, scores, control, settings)
        day = row_day
        units.add(unit)
        names = list(arms)
        if teams:
            first[names[teams[0]]] = first.get(names[teams[0]], 0) + 1
        for team in teams:
            shown[names[team]] = shown.get(names[team], 0) + 1
        rankings = [list(r) for r in rankings]
        shown_clicks = {p for p in positions if p and 1 <= p <= len(teams)}
        clicks_total += len(shown_clicks)
        prefix = common_prefix(rankings)
        clicks_in_prefix += sum(p <= prefix for p in shown_clicks)
        clicks = credit(list(teams), shown_clicks, len(names), rankings)
        if any(clicks):
            clicked_impressions += 1
        by_arm = dict(zip(names, clicks))
        for arm in candidates:
            scores[arm].add(unit, by_arm.get(arm, 0), by_arm.get(control, 0))
    if day is not None:
        points += _look(day, scores, control, settings)
    balance = team_balance([first[a] for a in arm_names], [shown[a] for a in arm_names], arm_names) \
        if rows else {"alert": None, "status": "unavailable", "reason": "No interleaved impressions yet."}
    prefs = {arm: preference(*scores[arm].units(), alpha=settings["alpha"], sequential=settings["sequential"],
                             tuning=settings["tuning"]) for arm in candidates}
    rows_for_offline = [{"arm": arm, "role": "primary", "higher_is_better": True,
                         "relative": _pref_interval(p), "relative_sequential": _pref_interval(p),
                         "direction": _direction(p)} for arm, p in prefs.items()]
    offline = offline_comparison(client, experiment, _NoTraffic(), rows_for_offline, database=database)
    report = _header(experiment, window, "interleaving") | {
        "settings": settings,
        "traffic": {"units": len(units), "impressions": len(rows), "impressions_with_credited_clicks":
                    clicked_impressions, "clicks": clicks_total, "clicks_in_common_prefix": clicks_in_prefix},
        "balance": balance,
        "preferences": [{"arm": arm, "control": control, **p.to_dict(), "direction": _direction(p)}
                        for arm, p in prefs.items()],
        "cumulative": {"metric": "preference", "points": points},
        "offline": offline,
    }
    report["verdict"] = _interleaving_verdict(experiment, report)
    return report


class _NoTraffic:
    """offline_comparison matches arms by what they served; interleaved arms all serve one merged list, so
    each arm is matched by the manifests of its encoder and index folders."""
    arms: dict = {}


def _pref_interval(p) -> dict:
    return {"lift": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high, "p_value": p.p_value, "method": p.method}


def _direction(p) -> str:
    if p.mean is None:
        return "unknown"
    if not p.significant:
        return "flat"
    return "better" if p.mean > 0 else "worse"


def _look(day, scores: dict, control: str, settings: dict) -> list[dict]:
    out = []
    for arm, unit_scores in scores.items():
        seq = preference(*unit_scores.units(), alpha=settings["alpha"], sequential=True, tuning=settings["tuning"])
        fixed = preference(*unit_scores.units(), alpha=settings["alpha"], sequential=False)
        out.append({"day": day.isoformat(), "arm": arm, "units": seq.units, "estimate": seq.mean,
                    "ci_low": fixed.ci_low, "ci_high": fixed.ci_high, "seq_low": seq.ci_low, "seq_high": seq.ci_high,
                    "seq_p_value": seq.p_value, "reason": seq.reason})
    return out


def _interleaving_verdict(experiment, report: dict) -> dict:
    if not report["traffic"]["impressions"]:
        return {"status": "no_data", "winner": None, "headline": "No interleaved traffic yet.",
                "reasons": ["No interleaved impression in the experiment's window."]}
    balance = report["balance"]
    if balance.get("alert"):
        return {"status": "withheld", "winner": None, "headline": "Verdict withheld: the teams are unbalanced.",
                "reasons": [f"First picks {balance['first_picks']} or shown positions {balance['positions']} are "
                            "not shared evenly (p < 0.001): the merge or the logging favours an arm."]}
    reasons, winners, losers, short = [], [], [], []
    for p in report["preferences"]:
        if p["mean"] is None:
            short.append(p["arm"])
            reasons.append(f"{p['arm']}: insufficient data: {p['reason']}")
            continue
        shown = (f"{p['arm']} vs {p['control']}: preference {p['mean']:+.3f} [{p['ci_low']:+.3f}, "
                 f"{p['ci_high']:+.3f}] over {p['units']} users (wins {p['wins']}, losses {p['losses']}, "
                 f"ties {p['ties']})")
        if p["direction"] == "better":
            winners.append((p["mean"], p["arm"]))
            reasons.append(shown + ": users prefer it (significant)")
        elif p["direction"] == "worse":
            losers.append(p["arm"])
            reasons.append(shown + ": users prefer the control (significant)")
        else:
            reasons.append(shown + " (not significant)")
    traffic = report["traffic"]
    if traffic.get("clicks_in_common_prefix"):
        reasons.append(f"{traffic['clicks_in_common_prefix']:,} of {traffic['clicks']:,} clicks were in the arms' "
                       "common prefix (the same documents in the same order at the top of every arm's ranking): "
                       "their team is a coin flip, so they count for no arm.")
    reasons += [f"Offline vs online disagree for {c['arm']}: {c['note']}."
                for c in report["offline"]["comparisons"] if c["disagreement"]]
    if winners:
        best = max(winners)[1]
        return {"status": "ship", "winner": best, "headline": f"Ship {best}: users prefer it to "
                f"{experiment.control} in interleaved results.", "reasons": reasons}
    if losers and len(losers) == len(report["preferences"]):
        return {"status": "no_ship", "winner": None,
                "headline": f"Do not ship: users prefer {experiment.control}.", "reasons": reasons}
    if short and len(short) == len(report["preferences"]):
        return {"status": "insufficient_data", "winner": None, "headline": "Insufficient data: no verdict yet.",
                "reasons": reasons}
    return {"status": "inconclusive", "winner": None, "headline": "No significant preference yet.",
            "reasons": reasons}


# -- shadow ----------------------------------------------------------------------------------------------------

def rbo(a: list[str], b: list[str], p: float = RBO_P) -> float:
    """Rank-biased overlap of two rankings truncated at depth k, extrapolated (Webber et al. 2010, eq. 32):
    (1 - p) / p * sum_d (X_d / d) p^d + (X_k / k) p^k, with X_d the overlap of the top d of each."""
    k = max(len(a), len(b))
    if k == 0:
        return 1.0
    agreement = [len(set(a[:d]) & set(b[:d])) / d for d in range(1, k + 1)]
    return (1 - p) / p * sum(x * p ** d for d, x in enumerate(agreement, 1)) + agreement[-1] * p ** k


def shadow_report(client, experiment, *, database: str = "abgate", now: datetime | None = None) -> dict:
    window, params, clause = _window_params(experiment, now)
    sql = (f"SELECT s.arm, s.doc_ids, s.latency_ms, s.error, i.doc_ids, i.latency_ms "
           f"FROM (SELECT * FROM {database}.shadow_results FINAL WHERE experiment = {{experiment:String}} AND "
           f"{clause}) AS s INNER JOIN (SELECT impression_id, doc_ids, latency_ms FROM {database}.impressions "
           f"FINAL WHERE experiment = {{experiment:String}}) AS i ON i.impression_id = s.impression_id")
    rows = client.query(sql, parameters=params).result_rows
    arms: dict[str, dict] = {}
    for arm, docs, latency, error, served, served_latency in rows:
        a = arms.setdefault(arm, {"overlap": [], "rbo": [], "latency": [], "control_latency": [], "zero": 0,
                                  "errors": 0, "n": 0})
        a["n"] += 1
        if error:
            a["errors"] += 1
            continue
        k = max(len(served), 1)
        a["overlap"].append(len(set(docs[:k]) & set(served)) / k)
        a["rbo"].append(rbo(list(docs), list(served)))
        a["latency"].append(float(latency))
        a["control_latency"].append(float(served_latency))
        a["zero"] += not docs
    out = []
    for arm, a in sorted(arms.items()):
        ok = a["n"] - a["errors"]
        out.append({"arm": arm, "requests": a["n"], "errors": a["errors"],
                    "error_rate": a["errors"] / a["n"] if a["n"] else None,
                    "overlap_at_k": _mean(a["overlap"]), "rbo": _mean(a["rbo"]),
                    "zero_result_rate": a["zero"] / ok if ok else None,
                    "latency_ms": _quantiles(a["latency"]), "control_latency_ms": _quantiles(a["control_latency"])})
    offline = offline_comparison(client, experiment, _NoTraffic(), [], database=database)
    report = _header(experiment, window, "shadow") | {"traffic": {"shadow_results": len(rows)}, "arms": out,
                                                      "offline": offline}
    report["verdict"] = ({"status": "no_data", "winner": None, "headline": "No shadow results yet.",
                          "reasons": ["No candidate answered a sampled request in the window yet."]} if not rows else
                         {"status": "shadow", "winner": None,
                          "headline": "Shadow: no user saw the candidate, so there is no winner.",
                          "reasons": [f"{a['arm']}: overlap@k {a['overlap_at_k']:.2f}, RBO {a['rbo']:.2f}, "
                                      f"p95 {a['latency_ms']['p95']:.1f} ms vs control "
                                      f"{a['control_latency_ms']['p95']:.1f} ms, errors {a['errors']}"
                                      for a in out if a["overlap_at_k"] is not None]})
    return report


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _quantiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]
    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99)}
