"""Every error the API answers, in one table: its HTTP status, the metric label it counts as,
its name in TEI's error shape and its OpenAPI description; and every engine error a request can
meet, with the error it is answered as.

A new error type is one row of ``API_ERRORS``; a new engine error is one row of
``ENGINE_ERRORS`` (``tests/unit/test_error_table.py`` fails for an engine exception that has none).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

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

RETRY_AFTER_BUSY_SECONDS: Final = 1
"""Overloaded or timed out: capacity frees up within about a forward pass or two."""
RETRY_AFTER_UNAVAILABLE_SECONDS: Final = 5
"""Loading or draining: another replica should take the retry."""

CLIENT_CLOSED_STATUS: Final = 499
"""nginx's status for a client that closed the connection before the answer. Nobody reads the
response; the status tells the telemetry what happened."""


@dataclass(frozen=True)
class ErrorType:
    """One ``error.type`` of the API's error bodies."""

    status: int
    """The HTTP status it is answered with."""
    metric: str
    """Its ``type`` label in ``reranker_request_errors_total`` (``metrics.ERROR_TYPES``)."""
    tei: str
    """Its ``error_type`` in TEI's error shape (TEI's ``ErrorType``)."""
    description: str
    """What it means, for the OpenAPI document of the scoring routes."""
    retry_after_seconds: int | None = None
    """The ``Retry-After`` it is answered with, if a retry can succeed soon."""


API_ERRORS: Final[Mapping[str, ErrorType]] = {
    "invalid_json": ErrorType(400, "validation", "validation", "Malformed JSON"),
    "unauthorized": ErrorType(401, "unauthorized", "validation", "Missing or wrong API key"),
    "not_found": ErrorType(404, "validation", "validation", "No such route"),
    "model_not_found": ErrorType(
        404, "validation", "validation", "The request's model is not served here"
    ),
    "method_not_allowed": ErrorType(405, "validation", "validation", "Wrong HTTP method"),
    "payload_too_large": ErrorType(
        413, "payload_too_large", "validation", "Too many documents or too large a body"
    ),
    "unsupported_media_type": ErrorType(
        415, "validation", "validation", "The body is not sent as JSON"
    ),
    "validation": ErrorType(422, "validation", "validation", "Invalid field"),
    "overloaded": ErrorType(
        429,
        "overloaded",
        "overloaded",
        "Overloaded; retry after the Retry-After header",
        RETRY_AFTER_BUSY_SECONDS,
    ),
    "client_disconnected": ErrorType(
        CLIENT_CLOSED_STATUS,
        "client_disconnected",
        "validation",
        "The client closed the connection before the answer (nobody reads it)",
    ),
    "internal": ErrorType(500, "internal", "backend", "Internal error"),
    "not_ready": ErrorType(
        503, "unavailable", "unhealthy", "Loading", RETRY_AFTER_UNAVAILABLE_SECONDS
    ),
    "draining": ErrorType(
        503, "unavailable", "unhealthy", "Shutting down", RETRY_AFTER_UNAVAILABLE_SECONDS
    ),
    "oom": ErrorType(503, "oom", "backend", "One document too large for device memory"),
    "device_failed": ErrorType(
        503,
        "internal",
        "backend",
        "The device failed for good: the replica must be restarted",
        RETRY_AFTER_UNAVAILABLE_SECONDS,
    ),
    "timeout": ErrorType(
        504,
        "timeout",
        "overloaded",
        "Not scored within RERANKER_REQUEST_TIMEOUT_SECONDS; its queued pairs were dropped",
        RETRY_AFTER_BUSY_SECONDS,
    ),
}
"""Keyed by the ``type`` of the error body."""

UNLISTED_CLIENT_ERROR: Final = ErrorType(400, "validation", "validation", "Bad request")
UNLISTED_SERVER_ERROR: Final = API_ERRORS["internal"]


def error_row(name: str | None, status: int | None = None) -> ErrorType:
    """The row of ``name``; for a name with none (an HTTP error of the framework's own), the
    row its status class falls in."""
    if name is not None and name in API_ERRORS:
        return API_ERRORS[name]
    return UNLISTED_SERVER_ERROR if status is None or status >= 500 else UNLISTED_CLIENT_ERROR


_NOT_FROM_SCORING_ROUTES: Final = frozenset(
    {"not_found", "method_not_allowed", "client_disconnected"}
)
"""Answered by the framework around the routes, or to nobody."""


def openapi_responses(model: Any) -> dict[int | str, dict[str, Any]]:
    """The scoring routes' error responses: each status once, with what its types mean."""
    by_status: dict[int, list[str]] = {}
    for name, row in API_ERRORS.items():
        if name not in _NOT_FROM_SCORING_ROUTES:
            by_status.setdefault(row.status, []).append(row.description)
    return {
        status: {"model": model, "description": "; ".join(descriptions)}
        for status, descriptions in sorted(by_status.items())
    }


@dataclass(frozen=True)
class EngineErrorAnswer:
    """What an engine error is answered with: an error type and what the body says."""

    type: str
    message: str
    field: str | None = None
    limit: int | float | None = None
    value: int | float | None = None


def _pair_too_long(exc: PairTooLongError) -> EngineErrorAnswer:
    return EngineErrorAnswer(
        "payload_too_large",
        f"{exc}; send truncate: true to have it cut",
        field=f"texts.{exc.index}",
        limit=exc.max_length,
        value=exc.tokens,
    )


def _too_many_pairs(exc: TooManyPairsError) -> EngineErrorAnswer:
    return EngineErrorAnswer(
        "payload_too_large",
        f"{exc}: fewer documents or a lower max_chunks_per_doc would fit "
        "(RERANKER_MAX_REQUEST_PAIRS)",
        field="documents",
        limit=exc.limit,
        value=exc.pairs,
    )


def _queue_full(exc: QueueFullError) -> EngineErrorAnswer:
    return EngineErrorAnswer(
        "overloaded",
        f"server busy: {exc.queued} pairs queued, limit {exc.limit}; retry shortly",
        field="documents",
        limit=exc.limit,
        value=exc.queued + exc.requested,
    )


def _pair_too_large(exc: PairTooLargeError) -> EngineErrorAnswer:
    return EngineErrorAnswer(
        "oom",
        f"{exc}, even alone; shorter documents or a lower RERANKER_MAX_LENGTH would fit",
        field="documents",
        value=exc.tokens,
    )


def _engine_stopped(exc: EngineStoppedError) -> EngineErrorAnswer:
    return EngineErrorAnswer("draining", "the service is shutting down")


def _device_lost(exc: DeviceLostError) -> EngineErrorAnswer:
    # Logged by the engine (device_lost); /health fails, so the replica gets restarted.
    return EngineErrorAnswer(
        "device_failed", f"the device failed and this replica must be restarted ({exc})"
    )


def _non_finite_scores(exc: NonFiniteScoresError) -> EngineErrorAnswer:
    # Logged by the engine with its pass (non_finite_scores); the client gets no number.
    return EngineErrorAnswer("internal", f"the model gave {exc.pairs} document(s) no finite score")


def _unknown_model(exc: UnknownModelError) -> EngineErrorAnswer:
    return EngineErrorAnswer("model_not_found", str(exc), field="model")


ENGINE_ERRORS: Final[Mapping[type[Exception], Callable[[Any], EngineErrorAnswer]]] = {
    PairTooLongError: _pair_too_long,
    TooManyPairsError: _too_many_pairs,
    QueueFullError: _queue_full,
    PairTooLargeError: _pair_too_large,
    EngineStoppedError: _engine_stopped,
    DeviceLostError: _device_lost,
    NonFiniteScoresError: _non_finite_scores,
    UnknownModelError: _unknown_model,
}
"""The engine errors a scoring call can raise, each with the answer it gets."""


def engine_error_answer(exc: Exception) -> EngineErrorAnswer | None:
    """The answer to ``exc``, found by its class or the nearest base class with a row; None
    for an error the table does not know (answered as internal, and logged)."""
    for cls in type(exc).__mro__:
        answer = ENGINE_ERRORS.get(cls)
        if answer is not None:
            return answer(exc)
    return None
