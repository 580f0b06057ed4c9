"""`create_app(settings)`: wires controllers, the lifespan that owns the runtime and event writer, metrics,
logging and error mapping. No behaviour lives here."""

from __future__ import annotations

import asyncio
import importlib
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial

import structlog
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin

from gateway import logging as gateway_logging
from experiments.errors import AbgateError
from gateway.eventlog.events import Event
from gateway.impressions import ImpressionCache, StoredImpressions
from gateway.prometheus import GatewayMetrics
from gateway.routes import CONTROLLERS
from gateway.routes.errors import EXCEPTION_HANDLERS, ApiError
from gateway.runtime import Runtime
from gateway.settings import Settings

log = structlog.get_logger("abgate.app")
STORE_START_WAIT_S = 60.0   # longest the start waits for the event store's first connection attempt


@dataclass
class Gateway:
    """What handlers reach through `request.app.state.gateway`."""
    settings: Settings
    metrics: GatewayMetrics
    impressions: ImpressionCache
    runtime: Runtime
    writer: object | None = None          # gateway.eventlog.writer.EventWriter when event logging is on
    stored_impressions: StoredImpressions | None = None  # cache misses looked up in the event log
    tasks: set = field(default_factory=set)

    def submit(self, event: Event) -> None:
        if self.writer is not None and not self.writer.submit(event):
            raise ApiError(503, "the event log cannot keep events right now (disk full or shutting down); "
                                "retry shortly")


def _writer(settings: Settings):
    from gateway.eventlog import store
    from gateway.eventlog.writer import EventWriter

    dsn = settings.dsn or store.default_dsn()
    return EventWriter(partial(store.connect, dsn), settings.spool_dir, flush_interval=settings.events_flush_s).start()


def _route_label(scope) -> str:
    # The route's template (/v1/experiments/{name:str}), never the raw path: label values must stay few.
    return scope.get("path_template") or "unmatched"


def _dashboard_handlers() -> list:
    """dashboards/routes.py (another engineer's) exposes `router` or `ROUTE_HANDLERS`; optional."""
    try:
        module = importlib.import_module("dashboards.routes")
    except ModuleNotFoundError as exc:
        if exc.name == "dashboards.routes":
            return []
        raise
    for name in ("router", "ROUTE_HANDLERS", "CONTROLLERS", "route_handlers"):
        handlers = getattr(module, name, None)
        if handlers is not None:
            return list(handlers) if isinstance(handlers, (list, tuple)) else [handlers]
    return []


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    gateway_logging.configure(settings.log_level)
    metrics = GatewayMetrics()
    gw = Gateway(settings, metrics, ImpressionCache(settings.impression_ttl_s, settings.impression_cache_size),
                 Runtime(settings, on_batch=metrics.batch_size.observe))

    @asynccontextmanager
    async def lifespan(app: Litestar):
        await gw.runtime.start()
        if settings.log_events:
            loop = asyncio.get_running_loop()
            gw.writer = await loop.run_in_executor(None, _writer, settings)
            # Open and migrate the store before saying ready: done under the first requests, it took a
            # tenth of the gateway's CPU for seconds (bench_gateway). A store that is down does not hold us.
            if not await loop.run_in_executor(None, gw.writer.wait_connected, STORE_START_WAIT_S):
                log.warning("event store not connected at start; events wait in the spool",
                            error=gw.writer.stats()["last_error"])
            gw.stored_impressions = StoredImpressions(gw.writer, gw.impressions, flush_s=settings.events_flush_s)
        metrics.watch(lambda: gw.writer.stats() if gw.writer is not None else {}, gw.runtime.queue_depth,
                      gw.runtime.query_cache_stats)
        _on_sighup(gw)
        log.info("gateway ready", layer=settings.layer, events="on" if gw.writer else "off",
                 max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
        try:
            yield
        finally:
            await gw.runtime.close()
            if gw.stored_impressions is not None:
                gw.stored_impressions.close()
            if gw.writer is not None:
                await asyncio.get_running_loop().run_in_executor(None, gw.writer.close)

    def count(scope, status: int) -> None:
        metrics.http_requests.labels(scope.get("method", ""), _route_label(scope), str(status)).inc()

    return Litestar(
        route_handlers=[*CONTROLLERS, *_dashboard_handlers()],
        lifespan=[lifespan],
        state=_state(gw),
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[gateway_logging.request_id_middleware(settings.access_log, count)],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="abgate", version="0.1.0", path="/docs",
                                     render_plugins=[SwaggerRenderPlugin(), ScalarRenderPlugin(path="/scalar")]),
        logging_config=None,
    )


def _state(gw: Gateway):
    from litestar.datastructures import State

    return State({"gateway": gw})


def _on_sighup(gw: Gateway) -> None:
    """SIGHUP reloads the experiments folder, like POST /v1/admin/reload (only in the main thread's loop)."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        async def run() -> None:
            try:
                await gw.runtime.reload()
            except AbgateError as exc:
                log.error("reload on SIGHUP refused; still serving the previous experiments", error=exc.located())
        task = loop.create_task(run())
        gw.tasks.add(task)
        task.add_done_callback(gw.tasks.discard)

    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (RuntimeError, ValueError, NotImplementedError):
        pass  # not the main thread (test clients): admin reload still works
