"""The dashboard's HTTP routes, as one Litestar Router that gateway/app.py mounts:

    GET /dashboard                          the experiments this gateway serves
    GET /dashboard/{experiment}             that experiment's report page (HTML)
    GET /dashboard/{experiment}/report.json the same report as JSON

Where the data comes from: a `DashboardSource` that the app puts in its state under `dashboard_source`
(the gateway's: its loaded experiments and a store client opened on its DSN the first time a page is asked
for; tests and a report-only server put their own). It reaches the handlers through `Provide`. In the serving
process the store is the same embedded folder the event writer uses; clickhouse-connect shares one chdb
engine per folder and the store's LockedClient serializes the queries. Reports run in a worker thread
(sync_to_thread): a ClickHouse query must not block the event loop that answers searches.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import structlog
from litestar import Response, Router, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import NotFoundException
from litestar.params import SkipValidation

from dashboards import pages
from dashboards.designs import render_page
from experiments.report import build_report

log = structlog.get_logger("abgate.dashboard")


@dataclass
class DashboardSource:
    """Experiments by name (a callable, so a reload is seen at once), a store client opened lazily, and the
    reports built from them: single-flight (concurrent requests for one experiment wait for one build) and
    cached for `ttl_s`, so N curious browsers cost one report, not N (a build is seconds of both cores)."""

    experiments: Callable[[], dict]
    connect: Callable[[], object]
    ttl_s: float = 0.0
    # aggregates refreshed less than this long ago are read as they are (the gateway's refresher keeps them
    # current); None: every build refreshes first (experiments/aggregates.py)
    max_lag_s: float | None = None
    clock: Callable[[], float] = time.monotonic
    builds: int = 0
    _client: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cache: dict = field(default_factory=dict)           # name -> (built at, experiment, report)
    _flights: dict = field(default_factory=dict)         # name -> the lock its build holds

    def report(self, name: str, experiment) -> dict:
        with self._lock:
            flight = self._flights.setdefault(name, threading.Lock())
        with flight:  # one build per experiment at a time; the others wait for it, then read the cache
            cached = self._cache.get(name)
            if cached and cached[1] is experiment and self.clock() - cached[0] < self.ttl_s:
                return cached[2]
            started = time.perf_counter()
            report = build_report(self.client(), experiment, max_lag_s=self.max_lag_s)
            self.builds += 1
            log.info("report built", experiment=name, seconds=round(time.perf_counter() - started, 2),
                     builds=self.builds)
            self._cache[name] = (self.clock(), experiment, report)
            return report

    def client(self):
        with self._lock:
            if self._client is None:
                self._client = self.connect()
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


DASHBOARD_SOURCE = "dashboard_source"


def provide_source(state: State) -> DashboardSource:
    source = state.get(DASHBOARD_SOURCE)
    if source is None:
        raise RuntimeError(f"the dashboard router needs a DashboardSource in app.state[{DASHBOARD_SOURCE!r}]")
    return source


def _experiment(source: DashboardSource, name: str):
    experiments = source.experiments()
    if name not in experiments:
        known = ", ".join(sorted(experiments)) or "none are loaded"
        raise NotFoundException(detail=f"no experiment named {name!r} in this gateway's experiments folder "
                                       f"(known: {known})")
    return experiments[name]


def _report(source: DashboardSource, name: str) -> dict:
    return source.report(name, _experiment(source, name))


@get("/", sync_to_thread=False, include_in_schema=False)
def dashboard_index(source: SkipValidation[DashboardSource]) -> Response:
    experiments = source.experiments()
    summaries = [pages.experiment_summary(e) for _, e in sorted(experiments.items())]
    return Response(pages.render_index(summaries), media_type="text/html")


@get("/{experiment:str}", sync_to_thread=True, include_in_schema=False)
def dashboard_experiment(experiment: str, source: SkipValidation[DashboardSource]) -> Response:
    return Response(render_page(_report(source, experiment)), media_type="text/html")


@get("/{experiment:str}/report.json", sync_to_thread=True)
def dashboard_report_json(experiment: str, source: SkipValidation[DashboardSource]) -> dict:
    """The experiment's full report (verdict, SRM, lifts, guardrails, offline vs online, daily series)."""
    return _report(source, experiment)


router = Router(path="/dashboard", route_handlers=[dashboard_index, dashboard_experiment, dashboard_report_json],
                dependencies={"source": Provide(provide_source, sync_to_thread=False)})
