"""Keeps the per-unit aggregates (experiments/aggregates.py) current while the gateway serves, so that a
dashboard or `abgate report` finds them up to date and reads only the units with new events since.

Every `interval_s` a daemon thread refreshes each A/B experiment the gateway serves, through the dashboard's
store client (the same lock as the report builds: a refresh never runs beside a build of the same store).
Interleaving and shadow reports read their own tables and need no aggregates. A failed refresh is logged and
tried again at the next tick: the report refreshes before reading anyway, so nothing is ever read stale.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import structlog

from experiments import aggregates
from experiments.metrics import DEFAULT_DWELL_THRESHOLD_S

log = structlog.get_logger("abgate.aggregates")


class AggregateRefresher:
    def __init__(self, experiments: Callable[[], dict], client: Callable[[], object], interval_s: float) -> None:
        self.experiments, self.client, self.interval_s = experiments, client, interval_s
        self.runs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="abgate-aggregates", daemon=True)

    def start(self) -> "AggregateRefresher":
        self._thread.start()
        return self

    def refresh_once(self) -> dict[str, dict]:
        done = {}
        for name, experiment in sorted(self.experiments().items()):
            if (getattr(experiment.design, "type", None) or "ab") != "ab" or experiment.start is None:
                continue
            started = time.perf_counter()
            try:
                result = aggregates.refresh_experiment(self.client(), experiment,
                                                       dwell_threshold=DEFAULT_DWELL_THRESHOLD_S)
            except Exception as exc:  # noqa: BLE001 - logged and retried at the next tick; reports refresh anyway
                log.warning("aggregate refresh failed", experiment=name, error=str(exc)[:300])
                continue
            done[name] = result.to_dict()
            if result.units:
                log.info("aggregates refreshed", experiment=name, mode=result.mode, units=result.units,
                         seconds=round(time.perf_counter() - started, 3))
        self.runs += 1
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.refresh_once()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
