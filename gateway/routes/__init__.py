"""HTTP controllers. Each is thin: it reads the request, calls the runtime/cache/writer, shapes the answer."""

from gateway.routes.admin import AdminController
from gateway.routes.experiments import ExperimentsController
from gateway.routes.health import HealthController
from gateway.routes.search import SearchController

CONTROLLERS = [SearchController, ExperimentsController, HealthController, AdminController]

__all__ = ["CONTROLLERS", "AdminController", "ExperimentsController", "HealthController", "SearchController"]
