"""GET /v1/experiments and /v1/experiments/{name}: what is loaded and how each experiment serves right now."""

from __future__ import annotations

from dataclasses import asdict

from litestar import Controller, get
from litestar.params import SkipValidation

from experiments.schema import Experiment
from gateway.routes.access import require_viewer
from gateway.routes.errors import ApiError
from gateway.runtime import Runtime
from gateway.settings import Settings


def describe(runtime: Runtime, exp: Experiment, full: bool = False) -> dict:
    out = {"name": exp.name, "layer": exp.layer, "status": exp.status,
           "serving_status": runtime.experiment_status(exp), "unit": exp.unit, "allocation": exp.allocation,
           "control": exp.control, "layer_buckets": list(exp.layer_buckets),
           "arms": [{"name": a.name, "weight": a.weight, "top_k": a.top_k} for a in exp.arms]}
    if full:
        # Never the salt: with it, every unit's arm can be predicted offline.
        out |= {"description": exp.description, "owner": exp.owner,
                "start": exp.start.isoformat() if exp.start else None,
                "end": exp.end.isoformat() if exp.end else None,
                "arms": [asdict(a) for a in exp.arms], "metrics": asdict(exp.metrics),
                "design": asdict(exp.design), "file": exp.source}
    return out


class ExperimentsController(Controller):
    path = "/v1/experiments"
    tags = ["experiments"]
    guards = [require_viewer]

    @get("/", summary="The experiments loaded from the folder")
    async def list_experiments(self, runtime: SkipValidation[Runtime], settings: SkipValidation[Settings]) -> dict:
        serving = runtime.serving
        return {"layer": settings.layer, "loaded_at": serving.loaded_at.isoformat(),
                "default_arm": serving.assigner.default_arm.name,
                "experiments": [describe(runtime, e) for _, e in sorted(runtime.experiments().items())]}

    @get("/{name:str}", summary="One experiment's full definition and serving status")
    async def get_experiment(self, name: str, runtime: SkipValidation[Runtime]) -> dict:
        exp = runtime.experiment(name)
        if exp is None:
            raise ApiError(404, f"no experiment named {name!r} is loaded; GET /v1/experiments lists them",
                           field="name")
        return describe(runtime, exp, full=True)
