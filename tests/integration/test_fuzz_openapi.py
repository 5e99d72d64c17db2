"""Fuzz every operation of the published OpenAPI schema against the real server (bounded):
no 5xx, and every answer has a status, content type and body the schema documents."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import ServedModel
from tests.support.local_server import serve_in_thread
from tests.support.serving import make_settings

EXAMPLES_PER_OPERATION = 60
API_KEY = "fuzz-key"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served_schema(checkpoint: Path, short_scoring_model: ServedModel) -> Iterator[BaseSchema]:
    # A small document limit keeps generated requests cheap; the schema does not cap the list,
    # so larger lists are answered with the documented 413.
    settings = make_settings(checkpoint, max_documents=64, api_key=API_KEY)
    app = create_app(settings, model=short_scoring_model)
    with serve_in_thread(app) as url:
        yield schemathesis.openapi.from_url(f"{url}/openapi.json")


def _operations(schema: BaseSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            pytest.fail(f"the OpenAPI schema has an invalid operation: {result.err()}")
        operations.append(result.ok())
    return operations


def test_fuzzed_requests_get_documented_answers_and_no_5xx(served_schema: BaseSchema) -> None:
    operations = _operations(served_schema)
    assert {op.path for op in operations} >= {"/rerank", "/v1/rerank", "/v2/rerank", "/info"}
    statuses: list[int] = []
    for operation, mode in itertools.product(operations, GenerationMode):
        # Positive cases follow the schema; negative ones break it on purpose, which needs
        # an input to break.
        if mode is GenerationMode.NEGATIVE and not len(operation.body):
            continue

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: Case[APIOperation[Any, Any, Any, Any]]) -> None:
            response = case.call_and_validate(
                headers={"Authorization": f"Bearer {API_KEY}"}, checks=CHECKS
            )
            statuses.append(response.status_code)

        fuzz()
    # Valid requests were scored and invalid ones refused, so both kinds reached the service.
    assert statuses.count(200) >= EXAMPLES_PER_OPERATION
    assert any(400 <= status < 500 for status in statuses)
