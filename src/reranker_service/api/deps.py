"""Named dependencies so route signatures read as sentences."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from reranker_service.api.errors import ApiError, engine_error, mark_tei, unavailable
from reranker_service.api.lifecycle import Lifecycle
from reranker_service.api.protocol import PRIORITY_RANGE, wire_shape
from reranker_service.api.record import RerankRecord, required_record
from reranker_service.engine.model_set import ModelSet, ServedEngine, UnknownModelError
from reranker_service.engine.score_cache import ScoreCache
from reranker_service.settings import Settings


@dataclass(frozen=True)
class RerankOptions:
    """The settings a rerank request is handled with, taken from ``Settings`` once."""

    max_documents: int
    default_instruction: str
    timeout_seconds: float | None
    """None: no deadline."""
    max_chunks_per_doc: int
    """Windows per document when a request asks for none."""
    max_chunks_limit: int
    """The most windows a request may ask for."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RerankOptions:
        return cls(
            max_documents=settings.max_documents,
            default_instruction=settings.default_instruction,
            timeout_seconds=settings.request_timeout_seconds or None,
            max_chunks_per_doc=settings.max_chunks_per_doc,
            max_chunks_limit=settings.max_chunks_limit,
        )


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_score_cache(request: Request) -> ScoreCache | None:
    """The score cache the app was built with; None when it is off."""
    cache: ScoreCache | None = request.app.state.score_cache
    return cache


ScoreCacheDep = Annotated[ScoreCache | None, Depends(get_score_cache)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


async def get_models(lifecycle: LifecycleDep) -> ModelSet:
    if lifecycle.phase != "ready" or lifecycle.models is None:
        raise unavailable("draining" if lifecycle.phase == "draining" else "loading")
    return lifecycle.models


ModelsDep = Annotated[ModelSet, Depends(get_models)]


@dataclass(frozen=True)
class RerankContext:
    """Everything a rerank call needs besides its body, gathered by one dependency: each
    dependency FastAPI solves costs the request tens of microseconds."""

    models: ModelSet
    lifecycle: Lifecycle
    options: RerankOptions
    record: RerankRecord
    """The request's record (``api.record``), which its telemetry reads."""
    request_id: str
    header_priority: int | None = None
    """``X-Reranker-Priority``, for clients that cannot add a field; the body's wins."""
    cache_lookup: bool = True
    """False when the request says ``Cache-Control: no-cache``: its scores are computed (and
    still stored)."""

    def pick(self, requested: str | None) -> ServedEngine:
        """The model the request's ``model`` names (see ``ModelSet.pick``), noted on its
        record; a name not served is a 404 naming the served ones."""
        try:
            served = self.models.pick(requested)
        except UnknownModelError as exc:
            raise engine_error(exc) from None
        self.record.model = served.name
        return served

    def priority(self, requested: int | None) -> int:
        """The request's priority: its body's, else its header's, else 0."""
        if requested is not None:
            return requested
        return self.header_priority if self.header_priority is not None else 0


async def get_rerank_context(
    request: Request,
    priority: Annotated[
        int | None,
        Header(
            alias="X-Reranker-Priority",
            ge=PRIORITY_RANGE[0],
            le=PRIORITY_RANGE[1],
            description="Scheduling priority, -10 to 10, lower first; the body's `priority` wins.",
        ),
    ] = None,
) -> RerankContext:
    app_state = request.app.state
    return RerankContext(
        models=await get_models(app_state.lifecycle),
        lifecycle=app_state.lifecycle,
        options=app_state.rerank_options,
        record=required_record(request.scope),
        request_id=str(request.state.request_id),
        header_priority=priority,
        cache_lookup=not _says_no_cache(request.headers.get("cache-control", "")),
    )


def _says_no_cache(cache_control: str) -> bool:
    return any(directive.strip().lower() == "no-cache" for directive in cache_control.split(","))


RerankContextDep = Annotated[RerankContext, Depends(get_rerank_context)]


def _is_json(content_type: str) -> bool:
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


TEI_PATH = "/rerank"
"""The one path that takes TEI's shape (beside Cohere's)."""


async def note_wire_shape(request: Request) -> None:
    """Mark a TEI-shaped request on ``/rerank`` before anything can refuse it, so that every
    error it gets (the API key's, the content type's, the readiness's, its fields') leaves in
    TEI's shape. FastAPI has read and parsed the body already: this reads its copy. (A body
    over ``RERANKER_MAX_REQUEST_BYTES`` is refused before it is read, in Cohere's shape.)"""
    if request.scope["path"] != TEI_PATH:
        return
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # not JSON (or nested past the parser's depth):
        return  # the body's own checks answer it
    if wire_shape(body) == "tei":
        mark_tei(request)


async def require_json_body(request: Request) -> None:
    """Rerank bodies are JSON and must say so: a form or text body is refused plainly (415)
    rather than reported as a missing object."""
    content_type = request.headers.get("content-type", "")
    if not _is_json(content_type):
        raise ApiError(
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
            "unauthorized",
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            field="Authorization",
            headers={"WWW-Authenticate": "Bearer"},
        )
