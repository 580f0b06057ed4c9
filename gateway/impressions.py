"""Recent impressions, kept in memory so feedback can be checked against what this gateway really served.

Design (the "integrity" requirement):
- Impression ids are `secrets.token_urlsafe(16)` (128 random bits, gateway.events.new_event_id): a client
  cannot invent a valid one, so feedback can only name an impression the gateway served.
- Every search response is remembered here for `ttl` seconds (default 1 hour), with what feedback needs:
  experiment, arm, unit, and the shown doc ids in order. The cache is bounded (`max_entries`); the oldest
  entries go first.
- Feedback is checked synchronously against this cache, before anything is written:
    unknown id (never served, or already evicted)  -> 404 `impression_not_found`
    known but older than the ttl                   -> 410 `impression_expired`
    doc_id not shown / position not where it was shown -> 422 naming the field
  so feedback can never overtake its impression: the impression is in the cache before the search response
  leaves, whatever the event writer's flush timing. The feedback event copies experiment, arm and unit
  from the cached impression, never from the client.
- Limits: the cache is per process and lost on restart. Run several gateway processes behind a router that
  sends feedback to the process that served the search (e.g. a process tag in the id, or sticky routing),
  or accept that feedback after a restart is refused (404): it is a small, unbiased loss across arms.

All methods run on the event loop thread, so no lock is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class ServedImpression:
    impression_id: str
    created: float                 # time.monotonic()
    experiment: str
    arm: str
    unit_id: str
    doc_ids: tuple[str, ...]


class ImpressionNotFound(LookupError):
    pass


class ImpressionExpired(LookupError):
    pass


class ImpressionCache:
    def __init__(self, ttl: float = 3600.0, max_entries: int = 1_000_000, clock=time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, ServedImpression] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, impression_id: str, experiment: str, arm: str, unit_id: str, doc_ids: list[str]) -> None:
        now = self._clock()
        self._entries[impression_id] = ServedImpression(impression_id, now, experiment, arm, unit_id,
                                                        tuple(doc_ids))
        # Entries are in creation order: drop from the front while full, or long past their ttl (twice the
        # ttl, so recently expired ids still answer 410 rather than 404).
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if len(self._entries) > self.max_entries or now - oldest.created > 2 * self.ttl:
                self._entries.popitem(last=False)
            else:
                break

    def get(self, impression_id: str) -> ServedImpression:
        entry = self._entries.get(impression_id)
        if entry is None:
            raise ImpressionNotFound(impression_id)
        if self._clock() - entry.created > self.ttl:
            raise ImpressionExpired(impression_id)
        return entry
