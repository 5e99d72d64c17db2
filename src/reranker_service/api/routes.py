"""Thin routes: validation (by the types) -> serving call -> response model."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from reranker_service import __version__
from reranker_service.api.cancellation import with_cancellation
from reranker_service.api.deps import (
    EngineDep,
    LifecycleDep,
    RerankContextDep,
    SettingsDep,
    require_api_key,
    require_json_body,
)
from reranker_service.api.protocol import (
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ReadyResponse,
    RerankRequest,
    RerankResponse,
    ServedDevice,
)
from reranker_service.api.rerank import rerank

METRICS_PATH = "/metrics"
PROBE_PATHS = frozenset({"/health", "/ready", METRICS_PATH})
"""Hit every few seconds by health checks and scrapers: left out of the HTTP latency figures,
and their access lines are written at debug unless they fail."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": description}
    for code, description in {
        400: "Malformed JSON",
        401: "Missing or wrong API key",
        413: "Too many documents or too large a body",
        415: "The body is not sent as JSON",
        422: "Invalid field",
        429: "Overloaded; retry after the Retry-After header",
        503: "Loading, shutting down, or one document too large for device memory (oom)",
        504: "Not scored within RERANKER_REQUEST_TIMEOUT_SECONDS; its queued pairs were dropped",
    }.items()
}

rerank_router = APIRouter(
    tags=["rerank"],
    dependencies=[Depends(require_api_key), Depends(require_json_body)],
    responses=_ERRORS,
)
ops_router = APIRouter(tags=["operations"])


def _rerank_endpoint(api_version: str) -> Any:
    @with_cancellation  # reads ``request`` to watch for the client's disconnect
    async def endpoint(
        body: RerankRequest, request: Request, context: RerankContextDep
    ) -> Response:
        with context.lifecycle.serving():
            response = await rerank(body, context, api_version)
        # Serialized here, once, by pydantic-core: handing FastAPI the model would validate it
        # again against the response model before encoding it. The route's response_model
        # still documents the shape.
        return Response(response.model_dump_json(exclude_none=True), media_type="application/json")

    return endpoint


_RERANK_ROUTES = (
    ("/rerank", "1", "Rerank documents (Cohere v1 / Jina shape)"),
    ("/v1/rerank", "1", "Rerank documents (Cohere v1 / Jina shape)"),
    ("/v2/rerank", "2", "Rerank documents (Cohere v2 shape)"),
)
RERANK_PATHS = frozenset(path for path, _, _ in _RERANK_ROUTES)

for _path, _api_version, _summary in _RERANK_ROUTES:
    rerank_router.add_api_route(
        _path,
        _rerank_endpoint(_api_version),
        methods=["POST"],
        response_model=RerankResponse,
        response_model_exclude_none=True,
        summary=_summary,
        operation_id="rerank" + _path.replace("/", "_").removesuffix("_rerank"),
    )


@ops_router.get("/health", response_model=HealthResponse, summary="Liveness")
async def health() -> HealthResponse:
    return HealthResponse(status="ok")


@ops_router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Loading or draining"}},
    summary="Readiness: 200 once the model is loaded and warm",
)
async def ready(lifecycle: LifecycleDep) -> JSONResponse:
    status_code = 200 if lifecycle.phase == "ready" else 503
    return JSONResponse({"status": lifecycle.phase}, status_code=status_code)


@ops_router.get("/info", response_model=InfoResponse, summary="What is served, with its limits")
async def info(engine: EngineDep, settings: SettingsDep) -> InfoResponse:
    model = engine.description
    return InfoResponse(
        model=model.model,
        revision=model.revision,
        device=",".join(served.device for served in engine.descriptions),
        devices=[
            ServedDevice(name=served.device, uuid=served.device_uuid)
            for served in engine.descriptions
        ],
        dtype=model.dtype,
        max_length=engine.limits.max_length,
        max_documents=settings.max_documents,
        max_batch_tokens=engine.limits.max_batch_tokens,
        prefix_reuse=engine.prefix_reuse,
        max_queued_pairs=engine.limits.max_queued_pairs,
        max_request_bytes=settings.max_request_bytes,
        default_instruction=settings.default_instruction,
        auth_required=settings.api_key is not None,
        version=__version__,
    )
