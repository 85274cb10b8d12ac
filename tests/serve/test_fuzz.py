"""Property-based fuzzing of every OpenAPI operation (schemathesis): no input makes the service answer 5xx.

Schemathesis draws requests from the service's own schema (bodies, path ids, upload bytes; schema-valid and
schema-violating ones) and sends them to the real app with the tiny trained models; besides "no server error" it
checks that every status code and content type is one the schema declares.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from ctrag.serve.app import create_app

MAX_EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzz_app(serve_config, service):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    config = dataclasses.replace(serve_config, allowed_hosts=("*",), max_queued=2)
    app = create_app(config, service)
    with TestClient(app):  # runs the lifespan: the job queue is closed (running jobs cancelled) at the end
        yield app


def test_no_input_makes_the_service_fail(fuzz_app) -> None:  # type: ignore[no-untyped-def]
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 11
    seen: dict[str, set[int]] = {}
    for operation, mode in itertools.product(operations, schemathesis.GenerationMode):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call_and_validate(
                checks=[not_a_server_error, status_code_conformance, content_type_conformance]
            )
            seen.setdefault(f"{case.method.upper()} {case.operation.path}", set()).add(response.status_code)

        fuzz()
    # The fuzzer reached past validation: valid searches and jobs were answered, invalid ones refused.
    assert 200 in seen["POST /api/search"] and 422 in seen["POST /api/search"], seen
    assert seen["POST /api/jobs"] & {202, 429}, seen
    assert seen["POST /api/uploads/mask"] & {400, 413}, seen
