"""Position bias from the A/B log itself: intervention harvesting (Agarwal, Zaitsev, Wang, Li, Najork & Joachims,
WSDM 2019; Fang, Agarwal & Joachims, SIGIR 2019).

Under the position-based model P(click on d at k | q) = p_k * rel(q, d). When two arms of a randomized experiment
show the same (q, d) at positions k and k', the arm a user sees is decided by a hash, not by the user, so the
two click-through rates differ only by p_k / p_k'; relevance cancels. Over the set S(k, k') of such (q, d):

    r(k', k) = sum over S of CTR(q, d at k') / sum over S of CTR(q, d at k)     estimates p_k' / p_k

Every pair of positions with such "free interventions" gives one ratio. Arms that rank alike (exact vs HNSW
search) mostly swap neighbours, so few (q, d) are seen at 1 and at 8; the ratios are therefore combined in the
spirit of the AllPairs estimator, by weighted least squares on logarithms:

    log p_k' - log p_k = log r(k', k)   for every estimable (k, k'),   log p_1 = 0,

each equation weighted by 1 / (1/c_k + 1/c_k') (the delta-method inverse variance of a log ratio of click
counts c). A position is estimated when a chain of interventions links it to position 1; the others are
reported as not estimable. Intervals: a percentile bootstrap that resamples (q, d) pairs, the unit whose
relevance cancels. Pure numpy, no store access: exporters/harvest.py hands it the impressions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class NoInterventions(Exception):
    """Nothing in the log lets position bias be measured; the message says why."""


@dataclass
class Curve:
    positions: list[int]                      # 1..K
    propensity: list[float | None]            # relative to position 1 (1.0); None: not estimable
    low: list[float | None]                   # bootstrap percentile interval
    high: list[float | None]
    interventions: int                        # (q, d) pairs seen at two positions by different arms
    pair_counts: dict[str, int] = field(default_factory=dict)   # "k-k'": (q, d) pairs behind each ratio
    bootstrap: int = 0
    method: str = "intervention harvesting: pairwise CTR ratios, weighted least squares on logs"

    def value(self, position: int) -> float:
        """The propensity used to weight a click at `position`: an unestimated position takes the one of the
        deepest estimated position above it (never a guess below the evidence), beyond K the last one."""
        best = 1.0
        for k, p in zip(self.positions, self.propensity):
            if k > position:
                break
            if p is not None:
                best = p
        return best

    def to_json(self) -> dict:
        return {"method": self.method, "relative_to": 1, "interventions": self.interventions,
                "bootstrap": self.bootstrap,
                "positions": {str(k): {"propensity": _round(p), "low": _round(lo), "high": _round(hi)}
                              for k, p, lo, hi in zip(self.positions, self.propensity, self.low, self.high)},
                "pair_counts": self.pair_counts}


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def assumed(eta: float, depth: int) -> Curve:
    """1 / k**eta: only when the caller asked for it with --assume-eta (a guess, recorded as one)."""
    values = [1.0 / k ** eta for k in range(1, depth + 1)]
    return Curve(list(range(1, depth + 1)), values, [None] * depth, [None] * depth, 0,
                 method=f"assumed 1/position^{eta:g} (--assume-eta), not estimated")


def interventions(impressions) -> tuple[np.ndarray, int, int]:
    """Rows (group, k, k', ctr_k, ctr_k', clicks_k, clicks_k') of every (q, d) shown at k and k' by two arms.

    `impressions`: iterable of (arm, query, doc_ids, clicked_positions). Only impressions of randomized traffic
    should be given (enrolled units of an experiment): the default arm's positions are not an intervention.
    Returns the rows, the number of (q, d) groups with an intervention, and the deepest position shown.
    """
    cells: dict[tuple[str, str], dict[int, dict[str, list[int]]]] = {}
    depth = 0
    for arm, query, doc_ids, clicked in impressions:
        depth = max(depth, len(doc_ids))
        for position, doc in enumerate(doc_ids, start=1):
            n_c = cells.setdefault((query, doc), {}).setdefault(position, {}).setdefault(arm, [0, 0])
            n_c[0] += 1
            n_c[1] += position in clicked
    rows, groups = [], 0
    for key in sorted(cells):  # a fixed order: the same log gives the same bootstrap draws, whatever its row order
        by_position = cells[key]
        if len(by_position) < 2:
            continue
        positions = sorted(by_position)
        found = False
        for i, k in enumerate(positions):
            for k2 in positions[i + 1:]:
                arms_k, arms_k2 = set(by_position[k]), set(by_position[k2])
                # an intervention needs the two positions to come from different arms (the randomized choice)
                if not any(a != b for a in arms_k for b in arms_k2):
                    continue
                n1, c1 = map(sum, zip(*by_position[k].values()))
                n2, c2 = map(sum, zip(*by_position[k2].values()))
                rows.append((groups, k, k2, c1 / n1, c2 / n2, c1, c2))
                found = True
        groups += found
    return np.asarray(rows, dtype=float).reshape(-1, 7), groups, depth


def _solve(rows: np.ndarray, multiplicity: np.ndarray, depth: int) -> list[float | None]:
    """Weighted least squares of log p_k' - log p_k = log r(k', k), with log p_1 = 0."""
    m = multiplicity[rows[:, 0].astype(int)]
    ks, k2s = rows[:, 1].astype(int) - 1, rows[:, 2].astype(int) - 1
    size = (depth, depth)
    ctr = np.zeros(size)   # ctr[k, k2]: summed CTR at k over the (q, d) seen at k and k2
    clicks = np.zeros(size)
    np.add.at(ctr, (ks, k2s), m * rows[:, 3])
    np.add.at(ctr, (k2s, ks), m * rows[:, 4])
    np.add.at(clicks, (ks, k2s), m * rows[:, 5])
    np.add.at(clicks, (k2s, ks), m * rows[:, 6])
    equations = [(k, k2) for k in range(depth) for k2 in range(k + 1, depth)
                 if clicks[k, k2] > 0 and clicks[k2, k] > 0]
    # only positions linked to position 1 by a chain of estimable ratios are identified
    linked, grew = {0}, True
    while grew:
        grew = False
        for k, k2 in equations:
            if (k in linked) != (k2 in linked):
                linked |= {k, k2}
                grew = True
    unknowns = sorted(linked - {0})
    if not unknowns:
        return [1.0] + [None] * (depth - 1)
    column = {k: j for j, k in enumerate(unknowns)}
    a, b, w = [], [], []
    for k, k2 in equations:
        if k not in linked:
            continue
        row = np.zeros(len(unknowns))
        if k2 in column:
            row[column[k2]] += 1.0
        if k in column:
            row[column[k]] -= 1.0
        a.append(row)
        b.append(np.log(ctr[k2, k] / ctr[k, k2]))
        w.append(np.sqrt(1.0 / (1.0 / clicks[k, k2] + 1.0 / clicks[k2, k])))
    a, b, w = np.asarray(a), np.asarray(b), np.asarray(w)
    solution, *_ = np.linalg.lstsq(a * w[:, None], b * w, rcond=None)
    out: list[float | None] = [1.0] + [None] * (depth - 1)
    for k, j in column.items():
        out[k] = float(np.exp(solution[j]))
    return out


def estimate(impressions, *, bootstrap: int = 200, seed: int = 0, level: float = 0.95) -> Curve:
    rows, groups, depth = interventions(impressions)
    if groups == 0:
        raise NoInterventions("no (query, doc) shown at two positions by different arms")
    if not (rows[:, 5].sum() > 0 and rows[:, 6].sum() > 0):
        raise NoInterventions(f"{groups} (query, doc) pairs were shown at two positions by different arms, "
                              "but none of them was clicked at both")
    point = _solve(rows, np.ones(groups), depth)
    if all(p is None for p in point[1:]):
        raise NoInterventions("no position below 1 is linked to position 1 by clicked interventions")
    rng = np.random.default_rng(seed)
    draws = np.full((bootstrap, depth), np.nan)
    for b in range(bootstrap):
        multiplicity = np.bincount(rng.integers(0, groups, groups), minlength=groups).astype(float)
        draws[b] = [np.nan if p is None else p for p in _solve(rows, multiplicity, depth)]
    tail = (1 - level) / 2 * 100
    low, high = [], []
    for k in range(depth):
        column = draws[:, k][~np.isnan(draws[:, k])]
        known = point[k] is not None and len(column) >= max(10, bootstrap // 2)
        low.append(float(np.percentile(column, tail)) if known else None)
        high.append(float(np.percentile(column, 100 - tail)) if known else None)
    counts: dict[str, int] = {}
    for _, k, k2, *_ in rows:
        key = f"{int(k)}-{int(k2)}"
        counts[key] = counts.get(key, 0) + 1
    return Curve(list(range(1, depth + 1)), point, low, high, groups, counts, bootstrap)


def render(curve: Curve) -> list[str]:
    """The curve as a terminal table, beside the 1/position of the default simulator for reference."""
    lines = [f"propensity by position ({curve.method}; {curve.interventions} (query, doc) interventions, "
             f"{curve.bootstrap} bootstrap draws)", "  pos  propensity  95% interval      1/pos"]
    for k, p, lo, hi in zip(curve.positions, curve.propensity, curve.low, curve.high):
        shown = "not estimable" if p is None else f"{p:10.3f}"
        interval = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "-"
        lines.append(f"  {k:>3}  {shown:>10}  {interval:<16}  {1 / k:.3f}")
    return lines
