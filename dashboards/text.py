"""A report (experiments/report.py's JSON-ready dict) as plain text for a terminal: `abgate report`."""

from __future__ import annotations

from dashboards.pages import fmt_interval, fmt_lift, fmt_p, fmt_value


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return [_row(header, widths), _row(["-" * w for w in widths], widths), *(_row(r, widths) for r in rows)]


def render_text(report: dict) -> str:
    exp, verdict, srm = report["experiment"], report["verdict"], report["srm"]
    lines = [f"{exp['name']}: {exp['description']}",
             f"window {report['window']['start']} -> {report['window']['end']}   units "
             f"{report['traffic']['units']:,}   impressions {report['traffic']['impressions']:,}", "",
             f"VERDICT [{verdict['status'].upper()}] {verdict['headline']}"]
    lines += [f"  - {r}" for r in verdict["reasons"]]
    p = srm.get("p_value")
    lines += ["", f"SRM: {srm['status']}" + (f" (p = {fmt_p(p)}; units {srm['observed']})" if p is not None
                                             else f" ({srm.get('reason')})"), ""]
    seq = report["settings"]["sequential"]
    rows = []
    for c in report["comparisons"]:
        rows.append([c["metric"], c["role"], c["arm"], fmt_value(c["control_value"], c["unit"]),
                     fmt_value(c["treatment_value"], c["unit"]), fmt_lift(c["relative"].get("lift")),
                     fmt_interval(c["relative"]), fmt_interval(c["relative_sequential"]) if seq else "",
                     fmt_p(c["adjusted_p_value"]), c["direction"] if not c["reason"] else c["reason"][:60]])
    if rows:
        lines += _table(["metric", "role", "arm", "control", "treatment", "lift", "95% CI",
                         "always-valid CI" if seq else "", "p adj", "result"], rows)
    if report["guardrails"]:
        lines += ["", "Guardrails:"]
        for g in report["guardrails"]:
            f = fmt_lift if g["scale"] == "relative" else (lambda v: fmt_lift(v, ""))
            interval = f" [{f(g['harm_low'])}, {f(g['harm_upper'])}]" if g.get("harm_low") is not None else ""
            needs = f"; about {g['units_needed']:,} units in total to clear" if g.get("units_needed") else ""
            lines.append(f"  {g['metric']} ({g['arm']}): {g['status']}, harm {f(g['harm'])}{interval} "
                         f"(margin {f(g['limit'])})" + (f" - {g['reason']}" if g.get("reason") else "") + needs)
    off = report["offline"]
    lines += ["", "Offline vs online:"]
    for arm, values in off["arms"].items():
        shown = "  ".join(f"{n} {fmt_value((values or {}).get(n))}" for n in off["metrics"])
        lines.append(f"  {arm}: {shown if values else 'no offline evaluation'}")
    for c in off["comparisons"]:
        deltas = "  ".join(f"{k} {v:+.4f}" for k, v in c["offline_deltas"].items()) or "offline deltas n/a"
        flag = "  DISAGREEMENT" if c["disagreement"] else ""
        test, online = c.get("offline_test"), c.get("online_interval")
        offline_ci = (f" (paired {test['metric']} {test['delta']:+.4f} [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}])"
                      if test else "")
        online_ci = (f" [{fmt_lift(online[0])}, {fmt_lift(online[1])}]" if online and online[0] is not None else "")
        lines.append(f"  {c['arm']} vs control: {deltas}{offline_ci}; online {fmt_lift(c['online_lift'])}{online_ci} "
                     f"({c['online_direction']}){flag}" + (f" - {c['note']}" if c.get("note") else ""))
    for w in report["warnings"] + [f"unknown metric {n!r}" for n in report["unknown_metrics"]]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
