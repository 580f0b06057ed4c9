"""Property-based fuzzing of the HTTP API from its own OpenAPI document (schemathesis), and of the POST bodies
with what no schema describes (any JSON, any bytes, deep nesting, other content types): no input gives a 5xx,
and every error is a JSON body. Runs against a real `abgate serve` process (real model, FAISS, chdb)."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10),
                                                                                            inner, max_size=4),
                     max_leaves=30)
_fields = st.fixed_dictionaries({}, optional={"query": _json, "unit_id": _json, "k": _json, "filters": _json,
                                              "impression_id": _json, "type": _json, "doc_id": _json,
                                              "position": _json, "value": _json, "idempotency_key": _json})
_nested = st.tuples(st.integers(1, 4000), st.sampled_from([(b"[", b"]"), (b'{"k":', b"}")])).map(
    lambda t: t[1][0] * t[0] + b"1" + t[1][1] * t[0])
_bodies = st.one_of(_json.map(lambda v: json.dumps(v).encode()), _fields.map(lambda v: json.dumps(v).encode()),
                    st.binary(max_size=512), _nested)
_content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                  "application/x-www-form-urlencoded", None])


def test_no_body_gives_a_server_error(fuzzed_gateway):
    with httpx.Client(base_url=fuzzed_gateway.url, timeout=30) as client:
        @given(path=st.sampled_from(["/v1/search", "/v1/feedback"]), body=_bodies, content_type=_content_types)
        @settings(max_examples=4 * EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(path, body, content_type):
            headers = {"content-type": content_type} if content_type else {}
            response = client.post(path, content=body, headers=headers)
            assert response.status_code < 500, (
                f"POST {path} {content_type} {body[:200]!r} -> {response.status_code}: {response.text[:500]}\n"
                f"{fuzzed_gateway.read_log()[-2000:]}")
            if response.status_code >= 400:
                error = response.json()
                assert error["status"] == response.status_code and error["error"] and error["request_id"], error
            if content_type is None or not content_type.startswith("application/json"):
                assert response.status_code == 415, (content_type, response.text)

        check()
