"""GET /v1/experiments and /v1/experiments/{name}: what is loaded and how each experiment serves right now."""

from __future__ import annotations

from dataclasses import asdict

from litestar import Controller, Request, get

from gateway.routes.errors import ApiError


def describe(gw, exp, full: bool = False) -> dict:
    out = {"name": exp.name, "layer": exp.layer, "status": exp.status,
           "serving_status": gw.runtime.experiment_status(exp), "unit": exp.unit, "allocation": exp.allocation,
           "control": exp.control, "layer_buckets": list(exp.layer_buckets),
           "arms": [{"name": a.name, "weight": a.weight, "top_k": a.top_k} for a in exp.arms]}
    if full:
        out |= {"description": exp.description, "owner": exp.owner, "salt": exp.salt,
                "start": exp.start.isoformat() if exp.start else None,
                "end": exp.end.isoformat() if exp.end else None,
                "arms": [asdict(a) for a in exp.arms], "metrics": asdict(exp.metrics),
                "design": asdict(exp.design), "file": exp.source}
    return out


class ExperimentsController(Controller):
    path = "/v1/experiments"
    tags = ["experiments"]

    @get("/", summary="The experiments loaded from the folder")
    async def list_experiments(self, request: Request) -> dict:
        gw = request.app.state.gateway
        serving = gw.runtime.serving
        return {"layer": gw.settings.layer, "loaded_at": serving.loaded_at.isoformat(),
                "default_arm": serving.assigner.default_arm.name,
                "experiments": [describe(gw, e) for _, e in sorted(serving.experiments.experiments.items())]}

    @get("/{name:str}", summary="One experiment's full definition and serving status")
    async def get_experiment(self, request: Request, name: str) -> dict:
        gw = request.app.state.gateway
        exp = gw.runtime.serving.experiments.experiments.get(name)
        if exp is None:
            raise ApiError(404, f"no experiment named {name!r} is loaded; GET /v1/experiments lists them",
                           field="name")
        return describe(gw, exp, full=True)
