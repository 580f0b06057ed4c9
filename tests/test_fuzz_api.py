"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis): no input gives a 5xx,
and every error is a JSON body. Runs against a real `abgate serve` process (real model, FAISS, chdb)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from conftest import GatewayProcess, write_two_arm_experiment

pytestmark = pytest.mark.slow
EXAMPLES_PER_OPERATION = 25   # keeps the module near 30 s on a shared 2-core machine


@pytest.fixture(scope="module")
def fuzzed_gateway(tmp_path_factory, gateway_artifacts):
    workdir = tmp_path_factory.mktemp("fuzz")
    write_two_arm_experiment(workdir / "experiments", *gateway_artifacts)
    gateway = GatewayProcess(workdir, workdir / "experiments", "--no-access-log")
    yield gateway
    gateway.stop()


def _operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/docs/openapi.json")
    return [result.ok() for result in schema.get_all_operations()]


# schemathesis's own pytest plugin does not load under this pytest, so hypothesis drives its strategies directly.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_input_gives_a_server_error(fuzzed_gateway, mode):
    operations = _operations(fuzzed_gateway.url)
    assert {op.path for op in operations} >= {"/v1/search", "/v1/feedback", "/v1/experiments/{name}"}
    for operation in operations:
        @given(operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            response = case.call(base_url=fuzzed_gateway.url, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}: "
                f"{response.text[:500]}\n{fuzzed_gateway.read_log()[-2000:]}")
            if response.status_code >= 400 and operation.path != "/metrics":
                body = response.json()
                assert body["status"] == response.status_code and body["error"], body

        try:
            check()
        except Unsatisfiable:
            # An operation with no inputs (GET /healthz) has no invalid request to generate.
            assert mode is GenerationMode.NEGATIVE and operation.path not in ("/v1/search", "/v1/feedback")
