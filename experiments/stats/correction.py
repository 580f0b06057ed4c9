"""Multiple-testing correction across metrics and arms.

Holm (1979) controls the family-wise error rate (the chance of any false positive) and is uniformly more
powerful than Bonferroni. Benjamini-Hochberg (1995) controls the false discovery rate (the expected share of
false positives among the positives), for independent or positively dependent tests. Both return adjusted
p-values in the input order, so "adjusted p < alpha" is the decision. None entries (tests that could not
run) pass through as None and do not count towards the number of tests.
"""

from __future__ import annotations

from collections.abc import Sequence


def _present(p_values: Sequence[float | None]) -> list[tuple[int, float]]:
    pairs = [(i, float(p)) for i, p in enumerate(p_values) if p is not None]
    for _, p in pairs:
        if not 0 <= p <= 1:
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    return pairs


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values: max over j<=i of (m - j + 1) p_(j), capped at 1."""
    pairs = sorted(_present(p_values), key=lambda pair: pair[1])
    m = len(pairs)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (index, p) in enumerate(pairs):
        running = max(running, min(1.0, (m - rank) * p))
        out[index] = running
    return out


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """BH step-up adjusted p-values: min over j>=i of m p_(j) / j, capped at 1."""
    pairs = sorted(_present(p_values), key=lambda pair: pair[1])
    m = len(pairs)
    out: list[float | None] = [None] * len(p_values)
    running = 1.0
    for rank in range(m - 1, -1, -1):
        index, p = pairs[rank]
        running = min(running, m * p / (rank + 1))
        out[index] = running
    return out


METHODS = {"holm": holm, "bh": benjamini_hochberg, "none": lambda p_values: list(p_values)}


def adjust(p_values: Sequence[float | None], method: str) -> list[float | None]:
    try:
        return METHODS[method](p_values)
    except KeyError:
        raise ValueError(f"unknown correction {method!r}; use one of {sorted(METHODS)}") from None
