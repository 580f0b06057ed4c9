"""GET /healthz (the process answers), /readyz (encoders and indexes loaded), /metrics (Prometheus)."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.params import SkipValidation

from gateway.prometheus import GatewayMetrics
from gateway.runtime import Runtime
from gateway.server import Lifecycle
from gateway.service import EventSink


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @get("/readyz", summary="Readiness: every arm's encoder and index is loaded")
    async def readyz(self, runtime: SkipValidation[Runtime], events: SkipValidation[EventSink],
                     lifecycle: SkipValidation[Lifecycle]) -> Response:
        if lifecycle.draining:  # SIGTERM: load balancers stop sending while in-flight requests finish
            return Response({"status": "draining"}, status_code=503)
        if not runtime.ready:
            return Response({"status": "loading"}, status_code=503)
        return Response({"status": "ready", **runtime.describe_artifacts(), "events": "on" if events.on else "off"},
                        status_code=200)

    @get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
    async def metrics(self, metrics: SkipValidation[GatewayMetrics]) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")
