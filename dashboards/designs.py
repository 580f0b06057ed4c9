"""Pages and text for interleaving and shadow experiments (A/B pages are dashboards/pages.py's), and the one
entry point that picks the renderer by the report's design."""

from __future__ import annotations

from html import escape

from dashboards import charts, pages, text


def render_page(report: dict) -> str:
    design = report.get("design", "ab")
    if design == "interleaving":
        return render_interleaving(report)
    if design == "shadow":
        return render_shadow(report)
    return pages.render_report(report)


def render_text(report: dict) -> str:
    design = report.get("design", "ab")
    if design == "ab":
        return text.render_text(report)
    exp, verdict = report["experiment"], report["verdict"]
    lines = [f"{exp['name']} ({design}): {exp['description']}",
             f"window {report['window']['start']} -> {report['window']['end']}", "",
             f"VERDICT [{verdict['status'].upper()}] {verdict['headline']}"]
    lines += [f"  - {r}" for r in verdict["reasons"]]
    if design == "interleaving":
        balance = report["balance"]
        lines += ["", f"Team balance: {balance.get('status')} (first picks {balance.get('first_picks')}, "
                      f"positions {balance.get('positions')})"]
    else:
        for a in report["arms"]:
            lines.append(f"  {a['arm']}: {a['requests']} shadow requests, overlap@k {pages.fmt_value(a['overlap_at_k'])}, "
                         f"RBO {pages.fmt_value(a['rbo'])}, p50/p95/p99 {a['latency_ms']} ms (control "
                         f"{a['control_latency_ms']}), zero results {pages.fmt_value(a['zero_result_rate'])}, "
                         f"errors {a['errors']}")
    for arm, values in report["offline"]["arms"].items():
        shown = "  ".join(f"{n} {pages.fmt_value((values or {}).get(n))}" for n in report["offline"]["metrics"])
        lines.append(f"  offline {arm}: {shown if values else 'no offline evaluation'}")
    return "\n".join(lines)


def _header(report: dict) -> list[str]:
    exp, window = report["experiment"], report["window"]
    return ["<p class='muted'><a href='/dashboard'>← all experiments</a></p>",
            f"<h1>{escape(exp['name'])}</h1><p class='sub'>{escape(report['design'])} · "
            f"{escape(exp['description'])} · owner {escape(exp['owner'])} · {escape(window['start'] or '?')} → "
            f"{escape(window['end'] or '')}</p>",
            f"<section class='card verdict v-{escape(report['verdict']['status'])}' id='verdict'><div class='label'>"
            f"Verdict {pages.badge(report['verdict']['status'])}</div><h2>{escape(report['verdict']['headline'])}"
            f"</h2><ul>{''.join(f'<li>{escape(r)}</li>' for r in report['verdict']['reasons'])}</ul></section>"]


def _offline_table(report: dict) -> str:
    off = report["offline"]
    head = "".join(f"<th>{escape(n)}</th>" for n in off["metrics"])
    rows = "".join(f"<tr><td class='l'>{escape(arm)}</td>" + "".join(
        f"<td>{pages.fmt_value((values or {}).get(n))}</td>" for n in off["metrics"]) + "</tr>"
        for arm, values in off["arms"].items())
    return (f"<h2>Offline</h2><div class='card'><table id='offline'><tr><th class='l'>Arm</th>{head}</tr>{rows}"
            "</table></div>")


def render_interleaving(report: dict) -> str:
    prefs = "".join(
        f"<tr><td class='l'>{escape(p['arm'])} vs {escape(p['control'])}</td><td>{pages.fmt_value(p['mean'])}</td>"
        f"<td>[{pages.fmt_value(p['ci_low'])}, {pages.fmt_value(p['ci_high'])}]</td><td>{p['units']:,}</td>"
        f"<td>{p['wins']:,} / {p['losses']:,} / {p['ties']:,}</td><td class='l'>{pages.badge(p['direction'])}</td></tr>"
        for p in report["preferences"])
    balance = report["balance"]
    body = _header(report) + [
        f"<div class='card' id='balance'><div class='label'>Team balance {pages.badge(balance.get('status', '?'))}"
        f"</div>first picks {escape(str(balance.get('first_picks')))}, shown positions "
        f"{escape(str(balance.get('positions')))}</div>",
        "<h2>Preference</h2><div class='card'><p class='muted note'>Wins minus losses per interleaved search "
        "with a credited click (a win: more credited clicks for the candidate), pooled per user, the user "
        "being the independent unit; clicks in the arms' common prefix count for no arm; tested against 0 "
        "with the always-valid interval.</p><table id='preferences'><tr><th class='l'>Arms</th>"
        "<th>Preference</th><th>Interval</th><th>Users</th><th>Wins / losses / ties</th><th class='l'></th></tr>"
        + prefs + "</table></div>",
        "<h2>Over time</h2><div class='card'>" + charts.cumulative_lift(
            report["cumulative"]["points"], title="Cumulative preference (each daily look)") + "</div>",
        _offline_table(report),
    ]
    return pages._page(f"{report['experiment']['name']} · abgate", "".join(body))


def render_shadow(report: dict) -> str:
    def ms(q: dict) -> str:
        return " / ".join(pages.fmt_value(q[k]) for k in ("p50", "p95", "p99"))
    rows = "".join(
        f"<tr><td class='l'>{escape(a['arm'])}</td><td>{a['requests']:,}</td><td>{pages.fmt_value(a['overlap_at_k'])}</td>"
        f"<td>{pages.fmt_value(a['rbo'])}</td><td>{ms(a['latency_ms'])}</td><td>{ms(a['control_latency_ms'])}</td>"
        f"<td>{pages.fmt_value(a['zero_result_rate'])}</td><td>{a['errors']:,}</td></tr>" for a in report["arms"])
    body = _header(report) + [
        "<h2>Candidate vs control on the same queries</h2><div class='card'><table id='shadow'><tr>"
        "<th class='l'>Candidate</th><th>Requests</th><th>Overlap@k</th><th>RBO</th><th>Latency p50/p95/p99 ms</th>"
        "<th>Control p50/p95/p99 ms</th><th>Zero results</th><th>Errors</th></tr>" + rows + "</table></div>",
        _offline_table(report),
    ]
    return pages._page(f"{report['experiment']['name']} · abgate", "".join(body))
