"""Admin actions behind the `X-API-Key` header: reload the experiments folder, stop an experiment."""

from __future__ import annotations

import secrets

from litestar import Controller, post
from litestar.params import SkipValidation
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from experiments.loader import ExperimentsInvalid
from gateway.routes.access import API_KEY_HEADER
from gateway.routes.errors import ApiError
from gateway.routes.experiments import describe
from gateway.runtime import Runtime



def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    expected = connection.app.state.settings.admin_api_key
    if not expected:
        raise ApiError(403, "admin endpoints are disabled: start the gateway with ABGATE_ADMIN_API_KEY set")
    given = connection.headers.get(API_KEY_HEADER, "")
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise ApiError(401, f"send the admin key in the {API_KEY_HEADER} header", field=API_KEY_HEADER)


class AdminController(Controller):
    path = "/v1/admin"
    tags = ["admin"]
    guards = [require_api_key]

    @post("/reload", status_code=200, summary="Reload the experiments folder without dropping requests")
    async def reload(self, runtime: SkipValidation[Runtime], force: bool = False) -> dict:
        try:
            serving = await runtime.reload(force=force)
        except ExperimentsInvalid as exc:
            raise _invalid(exc) from None
        return {"reloaded": True, "experiments": sorted(serving.experiments.experiments),
                **runtime.describe_artifacts()}

    @post("/experiments/{name:str}/stop", status_code=200, summary="Stop an experiment: everyone gets control")
    async def stop(self, name: str, runtime: SkipValidation[Runtime]) -> dict:
        try:
            exp = await runtime.stop_experiment(name)
        except KeyError:
            raise ApiError(404, f"no experiment named {name!r} is loaded", field="name") from None
        return describe(runtime, exp)


class InvalidExperiments(ApiError):
    def __init__(self, exc: ExperimentsInvalid) -> None:
        super().__init__(422, "the experiments folder is invalid; the gateway keeps serving the previous one: "
                              + exc.errors[0].located(), field=exc.errors[0].field)
        self.extra = [{"file": e.file, "line": e.line, "field": e.field, "error": e.message} for e in exc.errors]


def _invalid(exc: ExperimentsInvalid) -> ApiError:
    return InvalidExperiments(exc)
