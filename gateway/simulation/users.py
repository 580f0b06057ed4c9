"""Simulated users for a running gateway: who searches what, and how they click.

The click model (documented with its reasons in docs/simulator.md) is a position-based model driven by the
qrels, the same judgments the offline NDCG is computed from, so that an arm with better rankings earns more
clicks exactly where offline evaluation says it should:

    P(click on the result at position p) = examination(p) * attractiveness(relevance) * propensity(user)
    examination(p)      = 1 / p ** eta                      (people read the top of the list more)
    attractiveness(0)   = noise                              (clicks on irrelevant results)
    attractiveness(g>0) = 1 - (1 - p_relevant) ** g          (graded qrels: more relevant, more clicks)

A click on a relevant result is followed by a long dwell (log-normal around `dwell_relevant_s`) and, with
probability `p_conversion`, a conversion; a click on an irrelevant result gets a short dwell.

Users are the randomization unit: each has several visits with several searches each, all sent under the same
`unit_id`, so assignment stickiness is exercised. The simulator never asks the server which arm a user is in
and never reads the `arm` field of a response: clicks depend only on what was shown.

Everything random is drawn from a generator seeded by (seed, user index), so a run is reproducible whatever
order concurrent users finish in.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from experiments.errors import InputError


@dataclass(frozen=True)
class ClickModel:
    eta: float = 1.0                 # examination decay: 1/p**eta
    p_relevant: float = 0.6          # P(click | examined, relevance 1)
    noise: float = 0.03              # P(click | examined, irrelevant)
    propensity_sigma: float = 0.3    # users differ: log-normal multiplier on every click probability
    dwell: bool = True
    dwell_relevant_s: float = 60.0   # median dwell after a relevant click
    dwell_irrelevant_s: float = 5.0  # median dwell after an irrelevant click (a bounce)
    p_conversion: float = 0.1        # P(conversion | relevant click)

    def __post_init__(self) -> None:
        for name in ("p_relevant", "noise", "p_conversion"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"must be a probability between 0 and 1, got {value}.", field=name)
        if self.eta < 0:
            raise InputError(f"must be >= 0 (0 means every position is read), got {self.eta}.", field="eta")

    def examination(self, position: int) -> float:
        return 1.0 / position ** self.eta

    def attractiveness(self, relevance: float) -> float:
        if relevance <= 0:
            return self.noise
        return 1.0 - (1.0 - self.p_relevant) ** relevance

    def click_probabilities(self, doc_ids: Sequence[str], relevance: Mapping[str, float],
                            propensity: float = 1.0) -> np.ndarray:
        probs = [self.examination(p) * self.attractiveness(relevance.get(d, 0)) * propensity
                 for p, d in enumerate(doc_ids, start=1)]
        return np.clip(np.asarray(probs, dtype=float), 0.0, 1.0)

    def feedback(self, doc_ids: Sequence[str], relevance: Mapping[str, float], rng: np.random.Generator,
                 propensity: float = 1.0) -> list[dict]:
        """The feedback events one user sends for one result list, as /v1/feedback bodies (less impression_id)."""
        probs = self.click_probabilities(doc_ids, relevance, propensity)
        clicked = rng.random(len(probs)) < probs
        events: list[dict] = []
        for index in np.flatnonzero(clicked):
            doc_id, position = doc_ids[index], int(index) + 1
            relevant = relevance.get(doc_id, 0) > 0
            events.append({"type": "click", "doc_id": doc_id, "position": position, "value": 1.0})
            if self.dwell:
                median = self.dwell_relevant_s if relevant else self.dwell_irrelevant_s
                seconds = float(median * math.exp(0.5 * rng.standard_normal()))
                events.append({"type": "dwell", "doc_id": doc_id, "position": position, "value": round(seconds, 2)})
            if relevant and rng.random() < self.p_conversion:
                # Keyed, as a client that may resend it must: one conversion per document and impression here.
                events.append({"type": "conversion", "doc_id": doc_id, "position": position, "value": 1.0,
                               "idempotency_key": "sim-conversion"})
        return events


@dataclass(frozen=True)
class Population:
    """How many users, and how much each one searches."""
    users: int = 200
    mean_visits: float = 3.0         # visits per user: 1 + Poisson(mean - 1), so everyone comes at least once
    mean_searches: float = 2.0       # searches per visit, same law
    max_searches_per_user: int = 50  # bounds the work a single user can cause


@dataclass(frozen=True)
class SimulatedUser:
    index: int
    unit_id: str
    propensity: float
    visits: tuple[tuple[str, ...], ...]   # query ids, one tuple per visit

    @property
    def searches(self) -> int:
        return sum(len(v) for v in self.visits)


@dataclass(frozen=True)
class Judgments:
    """SciFact-style test queries: text and graded relevance per document, only queries that have judgments."""
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]] = field(repr=False)

    @property
    def query_ids(self) -> list[str]:
        return sorted(self.queries)


def user_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def make_users(population: Population, query_ids: Sequence[str], *, seed: int,
               model: ClickModel = ClickModel(), prefix: str = "sim") -> list[SimulatedUser]:
    if population.users < 1:
        raise InputError(f"needs at least one user, got {population.users}.", field="users")
    if not query_ids:
        raise InputError("there are no judged queries to send.", field="queries")
    users = []
    for i in range(population.users):
        rng = user_rng(seed, i)
        propensity = float(math.exp(model.propensity_sigma * rng.standard_normal()
                                    - model.propensity_sigma ** 2 / 2))  # mean 1
        visits, total = [], 0
        for _ in range(1 + rng.poisson(max(population.mean_visits - 1, 0))):
            n = min(1 + rng.poisson(max(population.mean_searches - 1, 0)),
                    population.max_searches_per_user - total)
            if n <= 0:
                break
            visits.append(tuple(query_ids[j] for j in rng.integers(0, len(query_ids), n)))
            total += n
        users.append(SimulatedUser(i, f"{prefix}-{seed}-{i}", propensity, tuple(visits)))
    return users


def _read_jsonl_queries(path: Path) -> dict[str, str]:
    queries = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                queries[str(row["_id"])] = str(row["text"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"is not a BEIR query line with _id and text ({exc}).",
                                 file=str(path), line=number, field="queries") from None
    return queries


def _read_qrels(path: Path) -> dict[str, dict[str, float]]:
    qrels: dict[str, dict[str, float]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").split("\t")
            if number == 1 and parts[0] == "query-id" or not line.strip():
                continue
            try:
                query_id, doc_id, score = parts
                qrels.setdefault(query_id, {})[doc_id] = float(score)
            except ValueError:
                raise InputError("expected three tab-separated columns: query-id, corpus-id, score.",
                                 file=str(path), line=number, field="qrels") from None
    return qrels


def load_judgments(data_dir: str | Path, split: str = "test") -> Judgments:
    """Queries of a BEIR folder that have at least one judgment in qrels/{split}.tsv."""
    data = Path(data_dir)
    queries_path, qrels_path = data / "queries.jsonl", data / "qrels" / f"{split}.tsv"
    for path in (queries_path, qrels_path):
        if not path.is_file():
            raise InputError(f"not found: expected a BEIR folder with queries.jsonl and qrels/{split}.tsv "
                             "(SciFact: see README, 'Data').", file=str(path), field="--data")
    texts = _read_jsonl_queries(queries_path)
    qrels = _read_qrels(qrels_path)
    missing = sorted(set(qrels) - set(texts))
    if missing:
        raise InputError(f"{len(missing)} judged queries are missing from queries.jsonl (first: {missing[0]}).",
                         file=str(qrels_path), field="qrels")
    judged = {q: texts[q] for q in qrels if any(v > 0 for v in qrels[q].values())}
    if not judged:
        raise InputError("has no positive judgments.", file=str(qrels_path), field="qrels")
    return Judgments(judged, {q: qrels[q] for q in judged})

