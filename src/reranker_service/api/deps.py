"""Named dependencies so route signatures read as sentences."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Receive

from reranker_service.api.errors import ApiError
from reranker_service.api.state import ServiceState
from reranker_service.api.telemetry import RerankRecord, record_of
from reranker_service.engine.service import RerankEngine
from reranker_service.settings import Settings

_RETRY_SOON = {"Retry-After": "5"}


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceStateDep = Annotated[ServiceState, Depends(get_service_state)]


async def get_engine(state: ServiceStateDep) -> RerankEngine:
    if state.phase == "draining":
        raise ApiError(503, "draining", "the service is shutting down", headers=_RETRY_SOON)
    if state.phase != "ready" or state.engine is None:
        raise ApiError(503, "not_ready", "the model is still loading", headers=_RETRY_SOON)
    return state.engine


EngineDep = Annotated[RerankEngine, Depends(get_engine)]


@dataclass(frozen=True)
class RerankContext:
    """Everything a rerank call needs besides its body, gathered by one dependency: each
    dependency FastAPI solves costs the request tens of microseconds."""

    engine: RerankEngine
    service: ServiceState
    settings: Settings
    record: RerankRecord
    """The record the telemetry middleware reads; a throwaway one when telemetry is off."""
    request_id: str
    receive: Receive
    """The request's ASGI receive: once the body is read, it reports the client's disconnect."""


async def get_rerank_context(request: Request) -> RerankContext:
    app_state = request.app.state
    return RerankContext(
        engine=await get_engine(app_state.service),
        service=app_state.service,
        settings=app_state.settings,
        record=record_of(request.scope) or RerankRecord(),
        request_id=str(request.state.request_id),
        receive=request.receive,
    )


RerankContextDep = Annotated[RerankContext, Depends(get_rerank_context)]


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def require_json_body(request: Request) -> None:
    """Rerank bodies are JSON and must say so: a form or text body is refused plainly (415)
    rather than reported as a missing object."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
            field="Content-Type",
            value=content_type[:100] or None,
        )


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """Bearer-key check for the rerank routes; constant-time, and the key is never echoed."""
    if settings.api_key is None:
        return
    scheme, _, offered = request.headers.get("authorization", "").partition(" ")
    expected = settings.api_key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), expected):
        raise ApiError(
            401,
            "unauthorized",
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            field="Authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
