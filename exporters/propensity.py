"""Position bias from the A/B log itself: intervention harvesting (Agarwal, Zaitsev, Wang, Li, Najork & Joachims,
WSDM 2019; Fang, Agarwal & Joachims, SIGIR 2019), fitted by maximum likelihood over all positions at once.

Under the position-based model E[clicks on d at k | q] = n * p_k * rel(q, d). When two arms of a randomized
experiment show the same (q, d) at positions k and k', the arm a user sees is decided by a hash, not by the user,
so the click rates of that (q, d) differ only by p_k / p_k'. Such a (q, d) is an *intervention group* g. Given
how many clicks C_g the group received in all, where they fell is multinomial, relevance cancelled:

    P(a click of g is at position k | C_g) = n_gk p_k / sum_j n_gj p_j        (n_gk: impressions of g at k)

The estimator maximizes this conditional likelihood over every group and every position jointly (Newton's
method on log p, log p_1 = 0): the AllPairs idea of using every pair of positions at once, with each group
weighted by what its clicks actually say. It is the Poisson maximum likelihood of the multiplicative model
with one free relevance per group profiled out, so its estimating equations are unbiased whatever the click
distribution (Bernoulli clicks, users with different click propensities): only their mean must follow the
model. Why not the pairwise CTR ratios of the paper combined by least squares on logarithms (this module's
first version): their inverse-variance weights came from the observed click counts, so a deep position's ratio
weighed more exactly when it happened to be high, and a pair of positions entered only when both had a click;
both push deep positions up (measured on simulated logs of the test's size: +6% at position 4, +8% at 5,
+20% at 8-10, averaged over 100 logs; docs/finetuning.md).

Identification (Ford 1957, Hunter 2004, for this Luce-type model): position k is estimated when, within the
groups, clicks link it to position 1 both ways (k was clicked where a position linked to 1 was also shown, and
the other way round): the strongly connected part of position 1 in the "clicked at k while k' was shown"
graph. The others are reported as not estimable. Intervals: a percentile bootstrap over randomization units
(a user's clicks stay together), refitting each draw. Pure numpy, no store access.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class NoInterventions(Exception):
    """Nothing in the log lets position bias be measured; the message says why."""


METHOD = "intervention harvesting: conditional maximum likelihood over all positions (AllPairs)"


@dataclass
class Curve:
    positions: list[int]                      # 1..K
    propensity: list[float | None]            # relative to position 1 (1.0); None: not estimable
    low: list[float | None]                   # bootstrap percentile interval
    high: list[float | None]
    interventions: int                        # (q, d) pairs seen at two positions by different arms
    pair_counts: dict[str, int] = field(default_factory=dict)   # "k-k'": (q, d) pairs shown at both k and k'
    bootstrap: int = 0
    method: str = METHOD
    clicks: int = 0                           # clicks on intervention groups, the evidence behind the curve

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
                "clicks": self.clicks, "bootstrap": self.bootstrap,
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


@dataclass
class Log:
    """The impressions of intervention groups, one entry per (impression, shown position)."""
    cell: np.ndarray        # entry -> cell (group, position)
    unit: np.ndarray        # entry -> randomization unit
    click: np.ndarray       # entry -> 1 if clicked
    cell_group: np.ndarray  # cell -> group
    cell_position: np.ndarray  # cell -> position index (0 = position 1)
    groups: int
    units: int
    depth: int
    pair_counts: dict[str, int]


def collect(impressions) -> Log:
    """The intervention groups of a log. `impressions`: iterable of (arm, query, doc_ids, clicked_positions[,
    unit]); `arm` names who ranked the list (harvest passes experiment/arm). Only impressions of randomized
    traffic should be given (enrolled units of an experiment): the default arm's positions are no intervention.
    Without a unit, each impression is its own unit."""
    where: dict[tuple[str, str], dict[int, set]] = {}
    entries: list[tuple[tuple[str, str], int, object, bool]] = []
    depth = 0
    for number, row in enumerate(impressions):
        arm, query, doc_ids, clicked = row[:4]
        unit = row[4] if len(row) > 4 else ("impression", number)
        depth = max(depth, len(doc_ids))
        for position, doc in enumerate(doc_ids, start=1):
            where.setdefault((query, doc), {}).setdefault(position, set()).add(arm)
            entries.append(((query, doc), position, unit, position in clicked))
    groups: dict[tuple[str, str], int] = {}
    pair_counts: dict[str, int] = {}
    for key in sorted(where):  # a fixed order: the same log gives the same bootstrap draws, whatever its row order
        by_position = where[key]
        positions = sorted(by_position)
        # an intervention needs two positions coming from different arms (the randomized choice)
        pairs = [(k, k2) for i, k in enumerate(positions) for k2 in positions[i + 1:]
                 if any(a != b for a in by_position[k] for b in by_position[k2])]
        if pairs:
            groups[key] = len(groups)
            for k, k2 in pairs:
                pair_counts[f"{k}-{k2}"] = pair_counts.get(f"{k}-{k2}", 0) + 1
    cells: dict[tuple[int, int], int] = {}
    units: dict[object, int] = {}
    cell, unit, click = [], [], []
    for key, position, who, clicked in entries:
        g = groups.get(key)
        if g is None:
            continue
        cell.append(cells.setdefault((g, position - 1), len(cells)))
        unit.append(units.setdefault(who, len(units)))
        click.append(clicked)
    keys = np.asarray(sorted(cells, key=cells.get), dtype=int).reshape(-1, 2)
    # units numbered in sorted order: the same log gives the same bootstrap draws, whatever its row order
    rank = {u: i for i, u in enumerate(sorted(units, key=str))}
    renumber = np.asarray([rank[u] for u in sorted(units, key=units.get)], dtype=int)
    return Log(np.asarray(cell, dtype=int), renumber[np.asarray(unit, dtype=int)], np.asarray(click, dtype=float),
               keys[:, 0], keys[:, 1], len(groups), len(units), depth, pair_counts)


def _linked(n: np.ndarray, c: np.ndarray) -> list[int]:
    """Positions strongly connected to position 1 by clicks: k -> k' when some group was clicked at k' while
    showing k (then k' 'beat' k). Where this fails the likelihood has no finite maximum for that position."""
    depth = n.shape[1]
    beat = ((n > 0).T.astype(float) @ (c > 0).astype(float)) > 0   # beat[k, k']: clicked at k' with k shown
    np.fill_diagonal(beat, False)

    def reach(adjacency: np.ndarray) -> set[int]:
        seen, todo = {0}, [0]
        while todo:
            k = todo.pop()
            for k2 in np.flatnonzero(adjacency[k]):
                if int(k2) not in seen:
                    seen.add(int(k2))
                    todo.append(int(k2))
        return seen

    both = reach(beat) & reach(beat.T)
    return sorted(k for k in both if k < depth)


def fit(n: np.ndarray, c: np.ndarray, iterations: int = 100) -> list[float | None]:
    """Maximum conditional likelihood of log p (log p_1 = 0) from group x position impressions n and clicks c."""
    depth = n.shape[1]
    out: list[float | None] = [1.0] + [None] * (depth - 1)
    keep = _linked(n, c)
    if len(keep) < 2:
        return out
    n, c = n[:, keep], c[:, keep]
    useful = (c.sum(1) > 0) & ((n > 0).sum(1) >= 2)
    n, c = n[useful], c[useful]
    total, per_position = c.sum(1), c.sum(0)
    theta = np.zeros(len(keep))

    def loglik(t: np.ndarray) -> float:
        return float(per_position @ t - total @ np.log(n @ np.exp(t)))

    current = loglik(theta)
    for _ in range(iterations):
        share = n * np.exp(theta)
        share /= share.sum(1, keepdims=True)
        gradient = per_position - total @ share
        hessian = (share * total[:, None]).T @ share - np.diag(total @ share)
        step = np.zeros_like(theta)
        try:
            step[1:] = np.linalg.solve(hessian[1:, 1:], -gradient[1:])
        except np.linalg.LinAlgError:  # numerically flat: the least-squares step still climbs
            step[1:] = np.linalg.lstsq(hessian[1:, 1:], -gradient[1:], rcond=None)[0]
        scale = 1.0
        while scale > 1e-6:  # concave: Newton with step halving never lowers the likelihood
            trial = loglik(theta + scale * step)
            if trial >= current - 1e-12:
                break
            scale /= 2
        theta, previous, current = theta + scale * step, current, trial
        if np.max(np.abs(scale * step)) < 1e-9 or abs(current - previous) < 1e-12:
            break
    for j, k in enumerate(keep):
        out[k] = float(np.exp(theta[j]))
    return out


def _matrices(log: Log, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group x position impressions and clicks, each entry counted `weights[unit]` times."""
    w = weights[log.unit]
    cells = len(log.cell_group)
    n_cell = np.bincount(log.cell, w, minlength=cells)
    c_cell = np.bincount(log.cell, w * log.click, minlength=cells)
    n = np.zeros((log.groups, log.depth))
    c = np.zeros((log.groups, log.depth))
    n[log.cell_group, log.cell_position] = n_cell
    c[log.cell_group, log.cell_position] = c_cell
    return n, c


def point_estimate(impressions) -> list[float | None]:
    log = collect(impressions)
    return fit(*_matrices(log, np.ones(log.units))) if log.groups else [1.0]


def estimate(impressions, *, bootstrap: int = 200, seed: int = 0, level: float = 0.95) -> Curve:
    log = collect(impressions)
    if log.groups == 0:
        raise NoInterventions("no (query, doc) shown at two positions by different arms")
    n, c = _matrices(log, np.ones(log.units))
    clicks = int(c.sum())
    if not clicks:
        raise NoInterventions(f"{log.groups} (query, doc) pairs were shown at two positions by different arms, "
                              "but none of them was clicked")
    point = fit(n, c)
    if all(p is None for p in point[1:]):
        raise NoInterventions("no position below 1 is linked to position 1 by clicked interventions")
    rng = np.random.default_rng(seed)
    draws = np.full((bootstrap, log.depth), np.nan)
    for b in range(bootstrap):
        multiplicity = np.bincount(rng.integers(0, log.units, log.units), minlength=log.units).astype(float)
        draws[b] = [np.nan if p is None else p for p in fit(*_matrices(log, multiplicity))]
    tail = (1 - level) / 2 * 100
    low, high = [], []
    for k in range(log.depth):
        column = draws[:, k][~np.isnan(draws[:, k])]
        known = point[k] is not None and len(column) >= max(10, bootstrap // 2)
        low.append(float(np.percentile(column, tail)) if known else None)
        high.append(float(np.percentile(column, 100 - tail)) if known else None)
    return Curve(list(range(1, log.depth + 1)), point, low, high, log.groups, log.pair_counts, bootstrap,
                 clicks=clicks)


def render(curve: Curve) -> list[str]:
    """The curve as a terminal table, beside the 1/position of the default simulator for reference."""
    lines = [f"propensity by position ({curve.method}; {curve.interventions} (query, doc) interventions, "
             f"{curve.clicks} clicks on them, {curve.bootstrap} bootstrap draws over units)",
             "  pos  propensity  95% interval      1/pos"]
    for k, p, lo, hi in zip(curve.positions, curve.propensity, curve.low, curve.high):
        shown = "not estimable" if p is None else f"{p:10.3f}"
        interval = f"[{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "-"
        lines.append(f"  {k:>3}  {shown:>10}  {interval:<16}  {1 / k:.3f}")
    return lines
