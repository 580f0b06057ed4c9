"""`create_app(settings)`: wires controllers, the lifespan that owns the runtime and event writer, metrics,
logging and error mapping. No behaviour lives here."""

from __future__ import annotations

import asyncio
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import structlog
from litestar import Litestar, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from dashboards.refresher import AggregateRefresher
from dashboards.routes import DASHBOARD_SOURCE, DashboardSource
from dashboards.routes import router as dashboard_router
from experiments.errors import AbgateError
from gateway import logging as gateway_logging
from gateway.eventlog import store
from gateway.eventlog.writer import EventWriter
from gateway.impression_ids import ImpressionSigner, parse_keys
from gateway.prometheus import GatewayMetrics
from gateway.routes import CONTROLLERS
from gateway.routes.body import JsonRequest
from gateway.routes.access import read_surface_open, require_viewer
from gateway.routes.errors import EXCEPTION_HANDLERS
from gateway.runtime import Runtime
from gateway.designs import ShadowRunner
from gateway.server import Lifecycle
from gateway.service import EventSink, SearchService
from gateway.settings import Settings

log = structlog.get_logger("abgate.app")
STORE_START_WAIT_S = 60.0   # longest the start waits for the event store's first connection attempt


@dataclass
class Resources:
    """What the app holds; the lifespan starts and closes what needs starting (the runtime's worker pool and
    state file, the event writer and its store). Handlers get the parts through `Provide`, never this."""
    settings: Settings
    metrics: GatewayMetrics
    runtime: Runtime
    events: EventSink
    service: SearchService
    tasks: set = field(default_factory=set)


def _writer(settings: Settings) -> EventWriter:
    dsn = settings.dsn or store.default_dsn()
    return EventWriter(partial(store.connect, dsn), settings.spool_dir, flush_interval=settings.events_flush_s).start()


def _route_label(scope) -> str:
    # The route's template (/v1/experiments/{name:str}), never the raw path: label values must stay few.
    return scope.get("path_template") or "unmatched"


def create_app(settings: Settings | None = None, lifecycle: Lifecycle | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    lifecycle = lifecycle or Lifecycle()
    gateway_logging.configure(settings.log_level)
    metrics = GatewayMetrics()
    runtime = Runtime(settings, on_batch=metrics.batch_size.observe)
    events = EventSink()
    shadow = ShadowRunner(events.submit, runtime.queue_depth, on_outcome=metrics.shadow.labels_inc)
    signer = ImpressionSigner(parse_keys(settings.impression_keys), ttl_s=settings.impression_ttl_s)
    service = SearchService(runtime, signer, events, metrics, shadow=shadow)
    res = Resources(settings, metrics, runtime, events, service)
    refreshing = settings.log_events and settings.aggregates_refresh_s > 0
    dashboard = DashboardSource(runtime.experiments, lambda: store.connect(settings.dsn or store.default_dsn()),
                                ttl_s=settings.report_ttl_s,
                                max_lag_s=2 * settings.aggregates_refresh_s if refreshing else None)

    @asynccontextmanager
    async def lifespan(app: Litestar):
        await runtime.start()
        shadow.start()
        if settings.log_events:
            loop = asyncio.get_running_loop()
            events.writer = await loop.run_in_executor(None, _writer, settings)
            # Open and migrate the store before saying ready: done under the first requests, it took a
            # tenth of the gateway's CPU for seconds (bench_gateway). A store that is down does not hold us.
            if not await loop.run_in_executor(None, events.writer.wait_connected, STORE_START_WAIT_S):
                log.warning("event store not connected at start; events wait in the spool",
                            error=events.writer.stats()["last_error"])
        metrics.watch(lambda: events.writer.stats() if events.writer is not None else {}, runtime.queue_depth,
                      runtime.query_cache_stats)
        refresher = None
        if refreshing:
            refresher = AggregateRefresher(runtime.experiments, dashboard.client, settings.aggregates_refresh_s).start()
        if read_surface_open(settings):
            log.warning("dashboards, report.json and experiment details are open without a key: no viewer or "
                        "admin key is set and the gateway listens on loopback only")
        if signer.ephemeral:
            log.warning("no ABGATE_IMPRESSION_KEYS: impression ids are signed with a random key of this process, "
                        "so feedback verifies only here and only until a restart; set the keys with more than "
                        "one replica (docs/gateway.md)")
        _on_sighup(res)
        log.info("gateway ready", layer=settings.layer, events="on" if events.on else "off",
                 max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
        try:
            yield
        finally:
            await shadow.close()
            await runtime.close()
            if refresher is not None:
                await asyncio.get_running_loop().run_in_executor(None, refresher.close)
            dashboard.close()
            if events.writer is not None:
                await asyncio.get_running_loop().run_in_executor(None, events.writer.close)

    def count(scope, status: int) -> None:
        metrics.http_requests.labels(scope.get("method", ""), _route_label(scope), str(status)).inc()

    def provide(value) -> Provide:
        return Provide(lambda: value, use_cache=True, sync_to_thread=False)

    app = Litestar(
        route_handlers=[*CONTROLLERS, Router("/", route_handlers=[dashboard_router], guards=[require_viewer])],
        dependencies={"settings": provide(settings), "metrics": provide(metrics), "runtime": provide(runtime),
                      "events": provide(events), "service": provide(service),
                      "lifecycle": provide(lifecycle)},
        lifespan=[lifespan],
        state=State({"settings": settings, DASHBOARD_SOURCE: dashboard}),
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=JsonRequest,
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="abgate", version="0.1.0", path="/docs",
                                     render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin(path="/scalar")]),
        logging_config=None,
    )
    # Around Litestar's whole handler, not in `middleware=`: that runs only for matched routes, so a 404 or 405
    # had no request id and was not counted. The route label is then "unmatched" (_route_label).
    app.asgi_handler = gateway_logging.request_id_middleware(settings.access_log, count)(app.asgi_handler)
    return app


def _on_sighup(res: Resources) -> None:
    """SIGHUP reloads the experiments folder, like POST /v1/admin/reload (only in the main thread's loop)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        async def run() -> None:
            try:
                await res.runtime.reload()
            except AbgateError as exc:
                log.error("reload on SIGHUP refused; still serving the previous experiments", error=exc.located())
        task = loop.create_task(run())
        res.tasks.add(task)
        task.add_done_callback(res.tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        pass  # not the main thread (test clients): admin reload still works
