"""Server-side SVG charts for the report pages.

Plain strings, no JavaScript and nothing fetched at view time, so a page saved to disk (`abgate report --html`)
looks the same as the live one. Each function takes the report's JSON pieces (see experiments/report.py) and
returns one `<svg>` element; values that are missing (None) are skipped, never drawn as zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# Colour-blind-safe palette (Okabe-Ito); arm colours are assigned in the experiment's arm order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
FONT = "font-family='system-ui, -apple-system, Segoe UI, sans-serif'"


def arm_colours(arms: Sequence[str]) -> dict[str, str]:
    return {arm: PALETTE[i % len(PALETTE)] for i, arm in enumerate(arms)}


def _finite(*values) -> bool:
    return all(v is not None and isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering [low, high] (the usual 1-2-5 steps)."""
    if not _finite(low, high) or high <= low:
        return [low] if _finite(low) else []
    raw = (high - low) / max(count, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _fmt(value: float, percent: bool = False) -> str:
    if percent:
        return f"{value * 100:+.1f}%" if value else "0%"
    if abs(value) >= 1000:
        return f"{value / 1000:.0f}k" if abs(value) >= 10_000 else f"{value / 1000:.1f}k"
    return f"{value:g}"


def _empty(width: int, height: int, message: str) -> str:
    return (f"<svg xmlns='http://www.w3.org/2000/svg' class='chart' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(message)}'>"
            f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#666' {FONT} font-size='14'>"
            f"{escape(message)}</text></svg>")


def forest_plot(rows: Sequence[dict], *, width: int = 1080, title: str = "Relative lift vs control") -> str:
    """One row per (metric, arm): the point estimate, the fixed-horizon interval (dark) and the always-valid
    sequential interval (light, wider). `rows`: dicts with label, estimate, ci_low, ci_high, seq_low, seq_high
    (relative lifts as fractions), colour and an optional note shown instead of a bar (e.g. zero variance)."""
    if not rows:
        return _empty(width, 80, "No metric comparisons yet")
    label_w, right_w, row_h, top, bottom = 270, 230, 30, 36, 34
    height = top + row_h * len(rows) + bottom
    values = [v for r in rows for v in (r.get("ci_low"), r.get("ci_high"), r.get("seq_low"), r.get("seq_high"),
                                        r.get("estimate")) if _finite(v)]
    low, high = (min(values + [0.0]), max(values + [0.0])) if values else (-0.05, 0.05)
    pad = (high - low) * 0.08 or 0.01
    low, high = low - pad, high + pad
    plot_x0, plot_x1 = label_w, width - right_w

    def x(v: float) -> float:
        return plot_x0 + (v - low) / (high - low) * (plot_x1 - plot_x0)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart forest' width='{width}' height='{height}' style='max-width:100%;height:auto' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(title)}'>",
           f"<text x='8' y='20' {FONT} font-size='15' font-weight='600'>{escape(title)}</text>"]
    for tick in _nice_ticks(low, high):
        out.append(f"<line x1='{x(tick):.1f}' y1='{top - 4}' x2='{x(tick):.1f}' y2='{height - bottom}' "
                   f"stroke='#eee'/><text x='{x(tick):.1f}' y='{height - bottom + 16}' text-anchor='middle' "
                   f"{FONT} font-size='11' fill='#555'>{_fmt(tick, percent=True)}</text>")
    out.append(f"<line x1='{x(0):.1f}' y1='{top - 6}' x2='{x(0):.1f}' y2='{height - bottom}' stroke='#333' "
               f"stroke-dasharray='4 3'/>")
    for i, row in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        colour = row.get("colour", PALETTE[0])
        if i % 2 == 0:
            out.append(f"<rect x='0' y='{cy - row_h / 2:.1f}' width='{width}' height='{row_h}' fill='#fafafa'/>")
        out.append(f"<text x='8' y='{cy + 4:.1f}' {FONT} font-size='12'>{escape(str(row.get('label', '')))}</text>")
        if _finite(row.get("seq_low"), row.get("seq_high")):
            out.append(f"<line x1='{x(row['seq_low']):.1f}' y1='{cy:.1f}' x2='{x(row['seq_high']):.1f}' "
                       f"y2='{cy:.1f}' stroke='{colour}' stroke-opacity='0.3' stroke-width='9' "
                       f"stroke-linecap='round'><title>sequential interval</title></line>")
        if _finite(row.get("ci_low"), row.get("ci_high")):
            out.append(f"<line x1='{x(row['ci_low']):.1f}' y1='{cy:.1f}' x2='{x(row['ci_high']):.1f}' "
                       f"y2='{cy:.1f}' stroke='{colour}' stroke-width='2.5'><title>confidence interval</title>"
                       f"</line>")
        if _finite(row.get("estimate")):
            out.append(f"<circle cx='{x(row['estimate']):.1f}' cy='{cy:.1f}' r='4.5' fill='{colour}' "
                       f"stroke='white'/>")
            text = _fmt(row["estimate"], percent=True)
            if _finite(row.get("ci_low"), row.get("ci_high")):
                text += f" [{_fmt(row['ci_low'], True)}, {_fmt(row['ci_high'], True)}]"
        else:
            text = row.get("note") or "no estimate"
        out.append(f"<text x='{width - right_w + 8}' y='{cy + 4:.1f}' {FONT} font-size='11' fill='#333'>"
                   f"{escape(text)}</text>")
    legend_y = height - 6
    out.append(f"<line x1='{plot_x0}' y1='{legend_y - 4}' x2='{plot_x0 + 22}' y2='{legend_y - 4}' stroke='#555' "
               f"stroke-width='2.5'/><text x='{plot_x0 + 28}' y='{legend_y}' {FONT} font-size='11'>"
               f"confidence interval</text>"
               f"<line x1='{plot_x0 + 160}' y1='{legend_y - 4}' x2='{plot_x0 + 182}' y2='{legend_y - 4}' "
               f"stroke='#555' stroke-opacity='0.3' stroke-width='9'/><text x='{plot_x0 + 188}' y='{legend_y}' "
               f"{FONT} font-size='11'>always-valid (sequential) interval</text>")
    out.append("</svg>")
    return "".join(out)


def _axes(out: list[str], x0: float, y0: float, x1: float, y1: float, y_ticks: list[float],
          y: callable, percent: bool) -> None:
    for tick in y_ticks:
        out.append(f"<line x1='{x0}' y1='{y(tick):.1f}' x2='{x1}' y2='{y(tick):.1f}' stroke='#eee'/>"
                   f"<text x='{x0 - 6}' y='{y(tick) + 4:.1f}' text-anchor='end' {FONT} font-size='11' "
                   f"fill='#555'>{_fmt(tick, percent)}</text>")
    out.append(f"<line x1='{x0}' y1='{y1}' x2='{x1}' y2='{y1}' stroke='#999'/>")


def _day_labels(out: list[str], days: Sequence[str], x: callable, y_base: float) -> None:
    step = max(1, math.ceil(len(days) / 8))  # at most ~8 labels so they never overlap
    for i in range(0, len(days), step):
        out.append(f"<text x='{x(i):.1f}' y='{y_base + 16}' text-anchor='middle' {FONT} font-size='11' "
                   f"fill='#555'>{escape(str(days[i])[5:10] or str(days[i]))}</text>")


def cumulative_lift(points: Sequence[dict], *, width: int = 1080, height: int = 320,
                    title: str = "Cumulative relative lift") -> str:
    """The lift as it looked at each daily look, with its always-valid interval (band) and the fixed-horizon
    interval (dashed): the band is what may be read every day; the dashed lines are only valid at the end."""
    points = [p for p in points if _finite(p.get("estimate"))]
    if not points:
        return _empty(width, 80, "No daily data yet")
    x0, x1, y0, y1 = 64, width - 28, 34, height - 36
    # The scale follows the estimates and the last look's intervals: the first looks' intervals are very wide
    # and would flatten everything else, so they are clipped at the plot's edge.
    last = points[-1]
    values = [p["estimate"] for p in points] + [v for v in (last.get("seq_low"), last.get("seq_high"),
                                                           last.get("ci_low"), last.get("ci_high")) if _finite(v)]
    low, high = min(values + [0.0]), max(values + [0.0])
    pad = (high - low) * 0.35 or 0.01
    low, high = low - pad, high + pad
    n = len(points)

    def x(i: float) -> float:
        return x0 + (x1 - x0) * (i / (n - 1) if n > 1 else 0.5)

    def y(v: float) -> float:
        return y1 - (min(max(v, low), high) - low) / (high - low) * (y1 - y0)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart cumulative' width='{width}' height='{height}' style='max-width:100%;height:auto' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(title)}'>",
           f"<text x='8' y='20' {FONT} font-size='15' font-weight='600'>{escape(title)}</text>"]
    _axes(out, x0, y0, x1, y1, _nice_ticks(low, high), y, True)
    band = [(i, p) for i, p in enumerate(points) if _finite(p.get("seq_low"), p.get("seq_high"))]
    if band:
        upper = " ".join(f"{x(i):.1f},{y(p['seq_high']):.1f}" for i, p in band)
        lower = " ".join(f"{x(i):.1f},{y(p['seq_low']):.1f}" for i, p in reversed(band))
        out.append(f"<polygon points='{upper} {lower}' fill='#0072B2' fill-opacity='0.15'>"
                   f"<title>always-valid interval</title></polygon>")
    for key in ("ci_low", "ci_high"):
        line = [(i, p[key]) for i, p in enumerate(points) if _finite(p.get(key))]
        if len(line) > 1:
            out.append("<polyline fill='none' stroke='#0072B2' stroke-dasharray='4 3' stroke-width='1' points='"
                       + " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in line) + "'/>")
    out.append(f"<line x1='{x0}' y1='{y(0):.1f}' x2='{x1}' y2='{y(0):.1f}' stroke='#333' stroke-dasharray='2 2'/>")
    out.append("<polyline fill='none' stroke='#0072B2' stroke-width='2.5' points='"
               + " ".join(f"{x(i):.1f},{y(p['estimate']):.1f}" for i, p in enumerate(points)) + "'/>")
    for i, p in enumerate(points):
        out.append(f"<circle cx='{x(i):.1f}' cy='{y(p['estimate']):.1f}' r='3' fill='#0072B2'>"
                   f"<title>{escape(str(p.get('day')))}: {_fmt(p['estimate'], True)}</title></circle>")
    _day_labels(out, [p.get("day", "") for p in points], x, y1)
    out.append("</svg>")
    return "".join(out)


def daily_counts(daily: Sequence[dict], arms: Sequence[str], field: str, *, width: int = 516, height: int = 250,
                 title: str = "") -> str:
    """Lines per arm of a daily count (units or impressions): an arm that stops getting traffic, or a sudden
    imbalance, shows up here before it shows up in the SRM test."""
    days = sorted({row["day"] for row in daily})
    if not days:
        return _empty(width, 80, "No traffic yet")
    colours = arm_colours(arms)
    by_arm = {arm: {row["day"]: row.get(field, 0) for row in daily if row["arm"] == arm} for arm in arms}
    top = max([v for series in by_arm.values() for v in series.values()] + [1])
    x0, x1, y0, y1 = 52, width - 28, 34, height - 52
    ticks = _nice_ticks(0, top * 1.05, 4)
    top = max(ticks[-1] if ticks else top, top)

    def x(i: float) -> float:
        return x0 + (x1 - x0) * (i / (len(days) - 1) if len(days) > 1 else 0.5)

    def y(v: float) -> float:
        return y1 - v / top * (y1 - y0)

    out = [f"<svg xmlns='http://www.w3.org/2000/svg' class='chart daily' width='{width}' height='{height}' style='max-width:100%;height:auto' "
           f"viewBox='0 0 {width} {height}' role='img' aria-label='{escape(title)}'>",
           f"<text x='8' y='20' {FONT} font-size='14' font-weight='600'>{escape(title)}</text>"]
    _axes(out, x0, y0, x1, y1, ticks, y, False)
    for arm in arms:
        series = by_arm[arm]
        pts = " ".join(f"{x(i):.1f},{y(series.get(day, 0)):.1f}" for i, day in enumerate(days))
        out.append(f"<polyline fill='none' stroke='{colours[arm]}' stroke-width='2' points='{pts}'/>")
        for i, day in enumerate(days):
            out.append(f"<circle cx='{x(i):.1f}' cy='{y(series.get(day, 0)):.1f}' r='2.5' fill='{colours[arm]}'>"
                       f"<title>{escape(arm)} {escape(str(day))}: {series.get(day, 0)}</title></circle>")
    _day_labels(out, days, x, y1)
    legend_x = x0
    for arm in arms:
        out.append(f"<rect x='{legend_x}' y='{height - 16}' width='10' height='10' fill='{colours[arm]}'/>"
                   f"<text x='{legend_x + 14}' y='{height - 7}' {FONT} font-size='11'>{escape(arm)}</text>")
        legend_x += 24 + 7 * len(arm)
    out.append("</svg>")
    return "".join(out)
