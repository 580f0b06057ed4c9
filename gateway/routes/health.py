"""GET /healthz (the process answers), /readyz (encoders and indexes loaded), /metrics (Prometheus)."""

from __future__ import annotations

from litestar import Controller, Request, Response, get


class HealthController(Controller):
    tags = ["health"]

    @get("/healthz", summary="Liveness")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @get("/readyz", summary="Readiness: every arm's encoder and index is loaded")
    async def readyz(self, request: Request) -> Response:
        gw = request.app.state.gateway
        if not gw.runtime.ready:
            return Response({"status": "loading"}, status_code=503)
        return Response({"status": "ready", **gw.runtime.describe_artifacts(),
                         "events": "on" if gw.writer is not None else "off"}, status_code=200)

    @get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
    async def metrics(self, request: Request) -> Response:
        return Response(request.app.state.gateway.metrics.render(), media_type="text/plain; version=0.0.4")
