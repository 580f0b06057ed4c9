"""Team-draft interleaving and multileaving: one result list built from every arm's ranking.

Team-draft interleaving (Radlinski, Kurup & Joachims 2008) for two arms, team-draft multileaving (Schuth,
Sietsma, Whiteson, Lefortier & de Rijke 2014) for more: the list is built in rounds; in each round the arms
take turns in a random order, and each adds its highest-ranked document not already in the list, which
joins that arm's team. A click is credited to the team of the position clicked (experiments/interleaving.py,
when the report is built; never at serving time).

Properties this gives (tests/test_interleaving.py):
- every arm's picks, in order, are a prefix of its own ranking (minus documents another arm already showed);
- with identical rankings, each arm's share of positions and of first picks is 1/m in expectation, so no arm
  is favoured by the merge itself;
- the coin flips come from a seed derived from the impression id, so a logged impression is replayed exactly.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Interleaved:
    doc_ids: tuple[str, ...]       # the merged list shown, best first
    teams: tuple[int, ...]         # per position: the index of the arm that contributed it
    seed: int                      # what the coin flips were drawn from (replay: interleave(..., seed=seed))


def seed_of(impression_id: str) -> int:
    """A stable 64-bit seed from the impression id (not Python's hash(), which is salted per process)."""
    return int.from_bytes(hashlib.sha256(impression_id.encode()).digest()[:8], "big")


def interleave(rankings: Sequence[Sequence[str]], k: int, seed: int) -> Interleaved:
    """Merge `rankings` (one per arm, best first) into at most `k` distinct documents, team-draft style."""
    if len(rankings) < 2:
        raise ValueError("interleaving needs at least two rankings")
    rng = random.Random(seed)
    cursors = [0] * len(rankings)
    shown: list[str] = []
    teams: list[int] = []
    seen: set[str] = set()
    arms = list(range(len(rankings)))

    def next_unseen(arm: int) -> str | None:
        ranking = rankings[arm]
        while cursors[arm] < len(ranking) and ranking[cursors[arm]] in seen:
            cursors[arm] += 1
        return ranking[cursors[arm]] if cursors[arm] < len(ranking) else None

    while len(shown) < k:
        order = arms[:]
        rng.shuffle(order)
        added = False
        for arm in order:
            if len(shown) >= k:
                break
            doc = next_unseen(arm)
            if doc is None:
                continue
            seen.add(doc)
            shown.append(doc)
            teams.append(arm)
            cursors[arm] += 1
            added = True
        if not added:  # every ranking is exhausted
            break
    return Interleaved(tuple(shown), tuple(teams), seed)
