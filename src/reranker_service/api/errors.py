"""Every error leaves as ``{"error": {type, message, field, limit, value, details}}``."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from reranker_service.api.error_table import API_ERRORS, engine_error_answer, error_row
from reranker_service.api.middleware import BodyTooLargeError
from reranker_service.api.protocol import (
    ErrorBody,
    ErrorDetail,
    ErrorResponse,
    TeiErrorResponse,
)
from reranker_service.api.record import note_error

logger = structlog.get_logger(__name__)

_MAX_ECHOED_CHARS = 100


class ApiError(Exception):
    """An error answer: its status, its metric label and its TEI name come from its type's row
    of ``API_ERRORS``, and so does its ``Retry-After``."""

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        field: str | None = None,
        limit: int | float | None = None,
        value: int | float | str | bool | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        row = API_ERRORS[error_type]
        self.status_code = row.status
        self.body = ErrorBody(
            type=error_type, message=message, field=field, limit=limit, value=value
        )
        self.headers = dict(headers or {})
        if row.retry_after_seconds is not None:
            self.headers.setdefault("Retry-After", str(row.retry_after_seconds))


def unavailable(phase: Literal["loading", "draining"]) -> ApiError:
    """The 503 for a service that is not serving: still loading, or shutting down."""
    if phase == "draining":
        return ApiError("draining", "the service is shutting down")
    return ApiError("not_ready", "the model is still loading")


def engine_error(exc: Exception) -> ApiError:
    """The answer to an error the engine raised, from its row of ``ENGINE_ERRORS``; one the
    table does not know is an internal error, logged with its traceback."""
    answer = engine_error_answer(exc)
    if answer is None:
        logger.error("scoring_failed", exc_info=exc)
        return ApiError("internal", "internal error while scoring")
    return ApiError(
        answer.type, answer.message, field=answer.field, limit=answer.limit, value=answer.value
    )


def mark_tei(request: Request) -> None:
    """This request came in TEI's shape: its errors leave in TEI's (``deps.note_wire_shape``)."""
    request.state.tei = True


def _is_tei(request: Request) -> bool:
    return bool(getattr(request.state, "tei", False))


def error_response(
    status_code: int, body: ErrorBody, request: Request, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body.request_id = getattr(request.state, "request_id", None)
    note_error(request.scope, body.type)
    content: Any
    if _is_tei(request):
        content = TeiErrorResponse(
            error=body.message, error_type=error_row(body.type, status_code).tei
        ).model_dump(mode="json")
    else:
        content = ErrorResponse(error=body).model_dump(mode="json", exclude_none=True)
    return JSONResponse(content, status_code=status_code, headers=dict(headers or {}))


def _echo(value: Any) -> int | float | str | bool | None:
    """A short, JSON-safe rendering of the offending input."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else type(value).__name__
    if len(text) > _MAX_ECHOED_CHARS:
        text = text[:_MAX_ECHOED_CHARS] + "..."
    # A lone surrogate (valid in JSON's \u escapes, not in UTF-8) is shown escaped.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_WIRE_PARTS = frozenset({"body", "cohere", "tei"})
"""Not fields: the request body itself, and the tag of the wire shape /rerank's body was
taken for."""
_PRIMITIVE_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "list", "dict"})


def _is_union_tag(part: str) -> bool:
    """pydantic names the member of a union an error is about (``str``, ``DocumentObject``,
    ``function-after[...]``); the wire fields are all snake_case words."""
    return part in _PRIMITIVE_TAGS or not part.isidentifier() or not part.islower()


def _field_path(location: tuple[Any, ...]) -> str:
    """The field as a client spells it (``documents[1].text``), without pydantic's names of
    union members; a header's error names the header."""
    if len(location) == 2 and location[0] == "header":
        return str(location[1])
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in _WIRE_PARTS and not _is_union_tag(str(part)):
            path += f".{part}" if path else str(part)
    return path or "body"


def _merged(errors: list[Mapping[str, Any]]) -> str:
    """One plain message for a field: a union's member errors as alternatives, without the
    names of the classes behind them."""
    messages = list(
        dict.fromkeys(
            re.sub(r" or instance of \w+", "", str(error.get("msg", "invalid"))) for error in errors
        )
    )
    lead = "Input should be "
    if len(messages) > 1 and all(message.startswith(lead) for message in messages):
        return lead + " or ".join(message.removeprefix(lead) for message in messages)
    return "; ".join(messages)


def _without_mismatched_members(
    by_field: dict[str, list[Mapping[str, Any]]],
) -> dict[str, list[Mapping[str, Any]]]:
    """Leave out a union's members the input is not even of the type of, where a member it is
    of failed inside: for ``{"text": 3}`` among ``documents``, the cause is ``text`` not being
    a string, not the object not being one."""

    # Every field some error lies inside: one pass over the fields, not one per field (a
    # request may bring a thousand bad documents).
    enclosing = {
        field[:index]
        for field in by_field
        for index, char in enumerate(field)
        if index and char in ".["
    }
    return {
        field: grouped
        for field, grouped in by_field.items()
        if not (
            field in enclosing
            and all(str(error.get("type", "")).endswith("_type") for error in grouped)
        )
    }


def _limit(error: Mapping[str, Any]) -> int | float | None:
    context = error.get("ctx") or {}
    for key in ("ge", "gt", "le", "lt", "min_length", "max_length"):
        bound = context.get(key)
        if isinstance(bound, int | float):
            return bound
    return None


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    malformed = next((error for error in errors if error.get("type") == "json_invalid"), None)
    if malformed is not None:
        position = malformed["loc"][-1]
        reason = (malformed.get("ctx") or {}).get("error", "JSON decode error")
        body = ErrorBody(
            type="invalid_json",
            message=f"request body is not valid JSON: {reason} at character {position}",
            field="body",
        )
        return error_response(400, body, request)
    by_field: dict[str, list[Mapping[str, Any]]] = {}
    for error in errors:
        field = _field_path(tuple(error.get("loc", ())))
        by_field.setdefault(field, []).append(error)
    by_field = _without_mismatched_members(by_field)
    details = [
        ErrorDetail(
            field=field,
            message=_merged(grouped),
            limit=_limit(grouped[0]),
            # A missing field has no value; its "input" is the object that lacks it.
            value=None if grouped[0].get("type") == "missing" else _echo(grouped[0].get("input")),
        )
        for field, grouped in by_field.items()
    ]
    first = details[0] if details else ErrorDetail(message="invalid request")
    body = ErrorBody(
        type="validation",
        message=f"{first.field}: {first.message}" if first.field else first.message,
        field=first.field,
        limit=first.limit,
        value=first.value,
        details=details,
    )
    return error_response(422, body, request)


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.body.model_copy(), request, exc.headers)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc, BodyTooLargeError):
        return error_response(413, exc.body(), request)
    if exc.status_code == 400:
        # FastAPI's own parse failure: what json.loads refuses beyond syntax errors.
        body = ErrorBody(
            type="invalid_json",
            message="request body cannot be parsed as JSON: not UTF-8, nested too deeply, "
            "or a number too long",
            field="body",
        )
        return error_response(400, body, request, exc.headers)
    names = {404: "not_found", 405: "method_not_allowed"}
    body = ErrorBody(type=names.get(exc.status_code, "http_error"), message=str(exc.detail))
    return error_response(exc.status_code, body, request, exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled_exception", path=request.url.path, exc_info=exc)
    body = ErrorBody(type="internal", message="internal server error")
    return error_response(500, body, request)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
