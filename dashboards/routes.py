"""The dashboard's HTTP routes, as one Litestar Router that gateway/app.py mounts:

    GET /dashboard                          the experiments this gateway serves
    GET /dashboard/{experiment}             that experiment's report page (HTML)
    GET /dashboard/{experiment}/report.json the same report as JSON

Where the data comes from (`app.state`): a `DashboardSource` under `dashboard_source` when one was put
there (tests, a report-only server), else the gateway's (`app.state.gateway`): its loaded experiments and a
store client opened on its DSN the first time a page is asked for. In the serving process that is the same
embedded store folder the event writer uses; clickhouse-connect shares one chdb engine per folder and
`gateway.eventlog.store.LockedClient` serializes the queries. Reports run in a worker thread (sync_to_thread): a
ClickHouse query must not block the event loop that answers searches.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from litestar import Request, Response, Router, get
from litestar.exceptions import NotFoundException

from dashboards import pages


@dataclass
class DashboardSource:
    """Experiments by name (a callable, so a reload is seen at once) and a store client, opened lazily."""

    experiments: Callable[[], dict]
    connect: Callable[[], object]
    _client: object | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

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


def _gateway_source(gw) -> DashboardSource:
    from gateway.eventlog import store

    def experiments() -> dict:
        serving = gw.runtime.serving
        return dict(serving.experiments.experiments) if serving is not None else {}

    return DashboardSource(experiments, lambda: store.connect(gw.settings.dsn or store.default_dsn()))


def source_of(request: Request) -> DashboardSource:
    state = request.app.state
    source = state.get("dashboard_source")
    if source is None:
        gw = state.get("gateway")
        if gw is None:
            raise RuntimeError("the dashboard needs app.state.dashboard_source or app.state.gateway")
        source = state["dashboard_source"] = _gateway_source(gw)
    return source


def _experiment(source: DashboardSource, name: str):
    experiments = source.experiments()
    if name not in experiments:
        known = ", ".join(sorted(experiments)) or "none are loaded"
        raise NotFoundException(detail=f"no experiment named {name!r} in this gateway's experiments folder "
                                       f"(known: {known})")
    return experiments[name]


def _report(request: Request, name: str) -> dict:
    from experiments.report import build_report  # imported on first use: the gateway starts without it

    source = source_of(request)
    return build_report(source.client(), _experiment(source, name))


@get("/", sync_to_thread=False, include_in_schema=False)
def dashboard_index(request: Request) -> Response:
    experiments = source_of(request).experiments()
    summaries = [pages.experiment_summary(e) for _, e in sorted(experiments.items())]
    return Response(pages.render_index(summaries), media_type="text/html")


@get("/{experiment:str}", sync_to_thread=True, include_in_schema=False)
def dashboard_experiment(request: Request, experiment: str) -> Response:
    return Response(pages.render_report(_report(request, experiment)), media_type="text/html")


@get("/{experiment:str}/report.json", sync_to_thread=True)
def dashboard_report_json(request: Request, experiment: str) -> dict:
    """The experiment's full report (verdict, SRM, lifts, guardrails, offline vs online, daily series)."""
    return _report(request, experiment)


router = Router(path="/dashboard", route_handlers=[dashboard_index, dashboard_experiment, dashboard_report_json])
