"""The error table is whole: every engine error a request can meet has its row, every error type
its status, metric label and TEI name, and the OpenAPI document lists them."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import httpx
import pytest

import reranker_service.engine
from reranker_service.api.error_table import (
    API_ERRORS,
    ENGINE_ERRORS,
    engine_error_answer,
)
from reranker_service.api.errors import ApiError, engine_error
from reranker_service.engine.model_set import UnknownModelError
from reranker_service.engine.pairs import PairTooLongError
from reranker_service.engine.rerank_engine import TooManyPairsError
from reranker_service.engine.runner.protocol import DeviceLostError
from reranker_service.engine.scheduler.jobs import (
    EngineStoppedError,
    NonFiniteScoresError,
    PairTooLargeError,
    QueueFullError,
)
from reranker_service.observability.metrics import ERROR_TYPES as METRIC_ERROR_TYPES

NOT_RAISED_TO_REQUESTS = {
    "BatchTooLargeError": "a pass out of memory: the scheduler halves it (PairTooLargeError)",
    "ModelLoadError": "start-up",
    "UnpackableModelError": "start-up: the packed runner is not planned",
    "SelfCheckMismatchError": "the compiled runner's proof: it is not swapped in",
    "GraphCaptureError": "the compiled runner's capture: it is not swapped in",
    "UpgradeFailedError": "the background compile: the eager runner serves on",
    "_CancelledError": "the background compile, stopped",
    "OwnerGoneError": "a shared pair's owner left: the waiter computes it (in_flight)",
}
"""Engine exceptions that never reach a scoring call, and where they end instead."""

ANSWERS: dict[type[Exception], tuple[Exception, int, str, str | None]] = {
    PairTooLongError: (PairTooLongError(2, 900, 512), 413, "payload_too_large", None),
    TooManyPairsError: (TooManyPairsError(300, 256), 413, "payload_too_large", None),
    QueueFullError: (QueueFullError(8, 60, 64), 429, "overloaded", "1"),
    PairTooLargeError: (PairTooLargeError(40_000), 503, "oom", None),
    EngineStoppedError: (EngineStoppedError(), 503, "draining", "5"),
    DeviceLostError: (DeviceLostError("cuda:0: illegal access"), 503, "device_failed", "5"),
    NonFiniteScoresError: (NonFiniteScoresError(2, "cuda:0"), 500, "internal", None),
    UnknownModelError: (UnknownModelError("gpt", ["qwen", "bge"]), 404, "model_not_found", None),
}
"""Each engine error with the status, type and Retry-After the API promises for it
(docs/api.md's table), written out here rather than read from the table under test."""

TEI_ERROR_TYPES = {"unhealthy", "backend", "overloaded", "validation", "tokenizer", "empty"}
"""TEI's ``ErrorType`` values (router/src/lib.rs)."""


def _engine_exceptions() -> dict[str, type[Exception]]:
    found: dict[str, type[Exception]] = {}
    package = reranker_service.engine
    for module_info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(module_info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and value.__module__ == module.__name__
            ):
                found[name] = value
    return found


def test_every_engine_error_has_a_row_or_a_reason() -> None:
    exceptions = _engine_exceptions()
    assert set(NOT_RAISED_TO_REQUESTS) <= set(exceptions), "a listed exception is gone"
    unlisted = {
        name
        for name, cls in exceptions.items()
        if cls not in ENGINE_ERRORS and name not in NOT_RAISED_TO_REQUESTS
    }
    assert not unlisted, f"engine errors with no row in error_table.ENGINE_ERRORS: {unlisted}"


def test_every_row_has_its_promised_answer() -> None:
    assert set(ENGINE_ERRORS) == set(ANSWERS)


@pytest.mark.parametrize("error_class", list(ENGINE_ERRORS), ids=lambda cls: cls.__name__)
def test_each_engine_error_gets_the_answer_the_api_promises(error_class: type[Exception]) -> None:
    exc, status, error_type, retry_after = ANSWERS[error_class]
    assert engine_error_answer(exc) is not None
    error = engine_error(exc)
    assert (error.status_code, error.body.type) == (status, error_type)
    assert error.headers.get("Retry-After") == retry_after
    assert error.body.message


def test_an_unknown_engine_error_is_internal() -> None:
    error = engine_error(RuntimeError("boom"))
    assert (error.status_code, error.body.type) == (500, "internal")
    assert "boom" not in error.body.message


def test_each_error_type_counts_as_a_metric_label_and_has_a_tei_name() -> None:
    for name, row in API_ERRORS.items():
        assert row.metric in METRIC_ERROR_TYPES, name
        assert row.tei in TEI_ERROR_TYPES, name
        assert 400 <= row.status < 600, name


def test_an_error_takes_its_status_and_retry_after_from_its_type() -> None:
    error = ApiError("overloaded", "busy")
    assert error.status_code == 429
    assert error.headers == {"Retry-After": "1"}
    with pytest.raises(KeyError):
        ApiError("no_such_type", "?")


async def test_the_openapi_document_lists_each_status_of_the_table(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    statuses = {str(row.status) for row in API_ERRORS.values()} - {"404", "405", "499"}
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/score"):
        responses = spec["paths"][path]["post"]["responses"]
        assert statuses <= set(responses), path
    descriptions = spec["paths"]["/v2/rerank"]["post"]["responses"]["503"]["description"]
    for name in ("oom", "device_failed", "not_ready", "draining"):
        assert API_ERRORS[name].description in descriptions
