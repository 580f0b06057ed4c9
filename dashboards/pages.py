"""HTML pages of the dashboard: the experiment list and one experiment's report.

Self-contained documents (inline CSS, inline SVG from dashboards/charts.py, no script, nothing from a CDN),
so the page served at /dashboard/{experiment} and the file written by `abgate report --html` are the same.
Input is the report dict of experiments/report.py; every value is escaped.
"""

from __future__ import annotations

from html import escape

from dashboards import charts

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:1180px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:26px;margin:8px 0 2px}h2{font-size:18px;margin:28px 0 10px}
.sub{color:#5a6275;margin:0 0 14px}.card{background:#fff;border-radius:10px;padding:16px 18px;
box-shadow:0 1px 3px rgba(0,0,0,.08);margin-bottom:14px}
.verdict{border-left:8px solid #888}.verdict h2{margin:0 0 6px;font-size:22px}
.v-ship{border-color:#1a9850}.v-no_ship{border-color:#d73027}.v-inconclusive{border-color:#e6a700}
.v-withheld,.v-invalid{border-color:#7b3294}.v-no_data,.v-insufficient_data{border-color:#888}
.badge{display:inline-block;padding:2px 9px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
background:#888;vertical-align:middle}.b-ok,.b-pass,.b-better,.b-ship{background:#1a9850}
.b-alert,.b-fail,.b-worse,.b-no_ship{background:#d73027}.b-inconclusive,.b-flat{background:#c49000}
.b-withheld,.b-invalid{background:#7b3294}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px}
.stat{font-size:24px;font-weight:600}.label{color:#5a6275;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{padding:6px 8px;text-align:right;
border-bottom:1px solid #e6e8ee;white-space:nowrap}th{color:#5a6275;font-weight:600}
td:first-child,th:first-child,td.l,th.l{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}
.muted{color:#5a6275;font-size:12px}ul{margin:6px 0 0 18px;padding:0}a{color:#0b5cad}
.warn{background:#fff6db;border-left:6px solid #e6a700}td.note{white-space:normal;min-width:220px}
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>")


def fmt_value(value, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "%":
        return f"{value:.2%}"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.4g}"


def fmt_lift(value, unit: str = "%") -> str:
    if value is None:
        return "–"
    return f"{value:+.2%}" if unit == "%" else f"{value:+.4g}"


def fmt_interval(result: dict | None, relative: bool = True) -> str:
    if not result or result.get("ci_low") is None:
        return "–"
    f = (lambda v: f"{v:+.2%}") if relative else (lambda v: f"{v:+.4g}")
    return f"[{f(result['ci_low'])}, {f(result['ci_high'])}]"


def fmt_p(p) -> str:
    return "–" if p is None else ("<0.0001" if p < 1e-4 else f"{p:.4f}")


def badge(text: str, kind: str | None = None) -> str:
    return f"<span class='badge b-{escape(kind or text)}'>{escape(text.replace('_', ' '))}</span>"


def _verdict(report: dict) -> str:
    v = report["verdict"]
    reasons = "".join(f"<li>{escape(r)}</li>" for r in v.get("reasons", []))
    return (f"<section class='card verdict v-{escape(v['status'])}' id='verdict'><div class='label'>Verdict "
            f"{badge(v['status'])}</div><h2>{escape(v['headline'])}</h2><ul>{reasons}</ul></section>")


def _summary(report: dict) -> str:
    srm, traffic = report["srm"], report["traffic"]
    srm_text = (f"p = {fmt_p(srm.get('p_value'))}" if srm.get("p_value") is not None
                else escape(srm.get("reason") or ""))
    cards = [f"<div class='card' id='srm'><div class='label'>Sample ratio {badge(srm['status'])}</div>"
             f"<div class='stat'>{srm_text}</div><div class='muted'>chi-square vs planned weights; "
             f"alert below {report['settings']['srm_threshold']}</div></div>",
             f"<div class='card'><div class='label'>Units</div><div class='stat'>{traffic['units']:,}</div></div>",
             f"<div class='card'><div class='label'>Impressions</div><div class='stat'>{traffic['impressions']:,}"
             f"</div></div>"]
    for arm, t in traffic["arms"].items():
        cards.append(f"<div class='card'><div class='label'>{escape(arm)}</div><div class='stat'>"
                     f"{t['units']:,} units</div><div class='muted'>{t['impressions']:,} impressions · p95 "
                     f"{fmt_value(t['latency_p95_ms'], 'ms')}</div></div>")
    return f"<div class='grid'>{''.join(cards)}</div>"


def forest_rows(report: dict) -> list[dict]:
    colours = charts.arm_colours([a["name"] for a in report["experiment"]["arms"]])
    rows = []
    for c in report["comparisons"]:
        seq = c.get("relative_sequential") or {}
        rows.append({"label": f"{c['metric']} · {c['arm']}" + (" (primary)" if c["role"] == "primary" else ""),
                     "estimate": c["relative"].get("lift"), "ci_low": c["relative"].get("ci_low"),
                     "ci_high": c["relative"].get("ci_high"), "seq_low": seq.get("ci_low"),
                     "seq_high": seq.get("ci_high"), "colour": colours.get(c["arm"], charts.PALETTE[0]),
                     "note": c.get("reason")})
    return rows


def _metrics_table(report: dict) -> str:
    head = ("<tr><th>Metric</th><th class='l'>Role</th><th class='l'>Arm</th><th>Control</th><th>Treatment</th>"
            "<th>Lift</th><th>95% CI</th><th>Always-valid CI</th><th>p (adj.)</th><th>P(beat)</th>"
            "<th class='l'>Result</th></tr>")
    body = []
    for c in report["comparisons"]:
        rel = c["relative"]
        result = badge(c["direction"]) if not c.get("reason") else f"<span class='muted'>{escape(c['reason'])}</span>"
        pbeat = c.get("probability_to_beat_control")
        body.append(f"<tr><td title='{escape(c['metric'])}'>{escape(c['label'])}</td><td class='l'>{c['role']}</td>"
                    f"<td class='l'>{escape(c['arm'])}</td><td>{fmt_value(c['control_value'], c['unit'])}</td>"
                    f"<td>{fmt_value(c['treatment_value'], c['unit'])}</td><td>{fmt_lift(rel.get('lift'))}</td>"
                    f"<td>{fmt_interval(rel)}</td><td>{fmt_interval(c.get('relative_sequential'))}</td>"
                    f"<td>{fmt_p(c['adjusted_p_value'])}</td><td>{'–' if pbeat is None else f'{pbeat:.1%}'}</td>"
                    f"<td class='l'>{result}</td></tr>")
    return f"<div class='card'><table id='metrics'>{head}{''.join(body)}</table></div>"


def _cuped(report: dict) -> str:
    """The primary metric's CUPED-adjusted lift beside the plain one (experiments/report.py `cuped`)."""
    cuped, out = report.get("cuped") or {}, []
    for r in cuped.get("comparisons", []):
        adj, gain = r["cuped_relative"], r["variance_reduction"] or 0.0
        text = escape(r["reason"]) if r["reason"] else (
            f"lift {fmt_lift(adj.get('lift'))} {fmt_interval(adj)} vs plain {fmt_interval(r['plain_relative'])}, "
            f"variance {'−' if gain >= 0 else '+'}{abs(gain):.0%}")
        out.append(f"<div class='card' id='cuped'>CUPED ({escape(r['arm'])}, pre-period of "
                   f"{cuped['pre_period']['days']} days): {text}</div>")
    return "".join(out)


def _guardrails(report: dict) -> str:
    if not report["guardrails"]:
        return ""
    rows = []
    for g in report["guardrails"]:
        rel = g["scale"] == "relative"
        points = report["metrics"].get(g["metric"], {}).get("unit") == "%"  # an absolute change of a rate
        f = fmt_lift if rel else (lambda v: "–" if v is None else f"{v * 100:+.2f} pp") if points else (
            lambda v: fmt_lift(v, ""))
        needs = (f"about {g['units_needed']:,} units in total to clear" if g.get("units_needed") else "")
        note = "; ".join(x for x in (g.get("reason"), needs) if x)
        interval = (f"[{f(g['harm_low'])}, {f(g['harm_upper'])}]" if g.get("harm_low") is not None
                    else "–")
        rows.append(f"<tr><td>{escape(g['metric'])}</td><td class='l'>{escape(g['arm'])}</td>"
                    f"<td>{'+' if rel else ''}{f(g['limit']).lstrip('+')}</td><td>{f(g['harm'])}</td>"
                    f"<td>{interval}</td><td class='l'>{badge(g['status'])}</td>"
                    f"<td class='l muted note'>{escape(note)}</td></tr>")
    policy = report.get("guardrails_policy", "block")
    caption = ("Each guardrail is a non-inferiority test: it passes when the harm's upper bound is under the "
               "margin. " + ("Ship waits until every guardrail passes." if policy == "block" else
                             "Policy warn: guardrails are reported, never blocking."))
    return ("<h2>Guardrails</h2><div class='card'><p class='muted note'>" + escape(caption) + "</p>"
            "<table id='guardrails'><tr><th>Metric</th><th class='l'>Arm"
            "</th><th>Margin</th><th>Harm</th><th>Interval</th><th class='l'>Status</th><th class='l'>"
            "</th></tr>" + "".join(rows) + "</table></div>")


def _offline(report: dict) -> str:
    off = report["offline"]
    names = off["metrics"]
    rows = []
    for arm, values in off["arms"].items():
        cells = "".join(f"<td>{fmt_value((values or {}).get(n))}</td>" for n in names)
        rows.append(f"<tr><td>{escape(arm)}</td>{cells}<td colspan='3'></td></tr>")
    for c in off["comparisons"]:
        deltas = "".join(f"<td>{fmt_lift(c['offline_deltas'].get(n), '')}</td>" for n in names)
        flag = badge("disagreement", "fail") if c["disagreement"] else ""
        rows.append(f"<tr><td>Δ {escape(c['arm'])}</td>{deltas}<td>{fmt_lift(c['online_lift'])}</td>"
                    f"<td class='l'>{badge(c['online_direction'])} {flag}</td>"
                    f"<td class='l muted note'>{escape(c.get('note') or '')}</td></tr>")
        test, online = c.get("offline_test"), c.get("online_interval")
        if test or online:
            offline_ci = (f"{escape(test['metric'])} {fmt_lift(test['delta'], '')} "
                          f"[{fmt_lift(test['ci_low'], '')}, {fmt_lift(test['ci_high'], '')}] "
                          f"({test['method']}, {test['queries']} queries)" if test else "offline: no per-query values")
            online_ci = (f"online {fmt_lift(c['online_lift'])} [{fmt_lift(online[0])}, {fmt_lift(online[1])}]"
                         if online and online[0] is not None else "online: no interval yet")
            rows.append(f"<tr class='intervals'><td></td><td class='l muted note' colspan='{len(names) + 3}'>"
                        f"{offline_ci} · {online_ci}</td></tr>")
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    return ("<h2>Offline vs online</h2><div class='card'><table id='offline'><tr><th>Arm</th>" + head +
            f"<th>Online {escape(report['experiment']['primary'])}</th><th class='l'>Online</th><th class='l'>"
            "</th></tr>" + "".join(rows) + "</table></div>")


def render_report(report: dict) -> str:
    exp = report["experiment"]
    window = report["window"]
    settings = report["settings"]
    cumulative = report["cumulative"]
    arms = [a["name"] for a in exp["arms"]]
    method = "always-valid confidence sequence" if settings["sequential"] else "fixed-horizon test"
    warnings = report.get("warnings", []) + [f"Unknown metric: {n}" for n in report.get("unknown_metrics", [])]
    body = [
        "<p class='muted'><a href='/dashboard'>← all experiments</a></p>",
        f"<h1>{escape(exp['name'])}</h1><p class='sub'>{escape(exp['description'])} · owner "
        f"{escape(exp['owner'])} · {escape(exp['status'])} · {escape(window['start'] or '?')} → "
        f"{escape(window['end'] or '')}</p>",
        _verdict(report),
        "".join(f"<div class='card warn'>{escape(w)}</div>" for w in warnings),
        _summary(report),
        "<h2>Lifts</h2><div class='card'>" + charts.forest_plot(forest_rows(report)) + "</div>",
        _metrics_table(report),
        _cuped(report),
        _guardrails(report),
        f"<h2>Over time</h2><div class='card'>" + charts.cumulative_lift(
            [p for p in cumulative["points"]],
            title=f"Cumulative relative lift of {cumulative['metric'] or exp['primary']} (each daily look)")
        + "</div>",
        "<div class='charts'><div class='card'>" + charts.daily_counts(report["daily"], arms, "units",
                                                                       title="Daily active units per arm")
        + "</div><div class='card'>" + charts.daily_counts(report["daily"], arms, "impressions",
                                                           title="Daily impressions per arm") + "</div></div>",
        _offline(report),
        f"<p class='muted'>Decisions: {method}, alpha {settings['alpha']}, {settings['correction']} correction "
        f"(primary across arms; secondary across metrics × arms). Generated {escape(report['generated_at'])}."
        "</p>",
    ]
    return _page(f"{exp['name']} · abgate", "".join(body))


def render_index(experiments: list[dict]) -> str:
    """experiments: {name, description, status, owner, primary, arms} for each experiment the gateway knows."""
    rows = "".join(
        f"<tr><td><a href='/dashboard/{escape(e['name'])}'>{escape(e['name'])}</a></td>"
        f"<td class='l'>{badge(e['status'], 'ok' if e['status'] == 'running' else 'flat')}</td>"
        f"<td class='l'>{escape(e['description'])}</td><td class='l'>{escape(', '.join(e['arms']))}</td>"
        f"<td class='l'>{escape(e['primary'])}</td><td class='l'>{escape(e['owner'])}</td></tr>"
        for e in experiments)
    table = ("<table id='experiments'><tr><th>Experiment</th><th class='l'>Status</th><th class='l'>Question</th>"
             "<th class='l'>Arms</th><th class='l'>Primary</th><th class='l'>Owner</th></tr>" + rows + "</table>"
             if experiments else "<p>No experiments are loaded.</p>")
    return _page("abgate experiments", f"<h1>Experiments</h1><p class='sub'>A/B tests of retrieval encoders"
                                       f"</p><div class='card'>{table}</div>")


def experiment_summary(experiment) -> dict:
    return {"name": experiment.name, "description": experiment.description, "status": experiment.status,
            "owner": experiment.owner, "primary": experiment.metrics.primary,
            "arms": [a.name for a in experiment.arms]}
