"""Thin routes: validation (by the types) -> serving call -> response model."""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from typing import Annotated, Any, Final

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, TypeAdapter

from reranker_service import __version__
from reranker_service.api.cancellation import with_cancellation
from reranker_service.api.deps import (
    LifecycleDep,
    ModelsDep,
    RerankContextDep,
    ScoreCacheDep,
    SettingsDep,
    note_wire_shape,
    require_api_key,
    require_json_body,
)
from reranker_service.api.error_table import openapi_responses
from reranker_service.api.ops_protocol import (
    CacheInfo,
    DtypeChoiceInfo,
    HealthResponse,
    InfoResponse,
    ModelCard,
    ModelInfo,
    ModelList,
    ReadyResponse,
    RunnerInfo,
    ServedDevice,
)
from reranker_service.api.protocol import (
    AnyRerankRequest,
    ErrorResponse,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    TeiErrorResponse,
    TeiRank,
    TeiRerankRequest,
)
from reranker_service.api.rerank import rerank, score_pairs, tei_rerank
from reranker_service.engine.model_set import ServedEngine
from reranker_service.engine.rerank_engine import RerankEngine
from reranker_service.engine.score_cache import ScoreCache
from reranker_service.settings import Settings

_JSON = "application/json"
_TEI_RANKS = TypeAdapter(list[TeiRank])

METRICS_PATH = "/metrics"
PROBE_PATHS = frozenset({"/health", "/ready", METRICS_PATH})
"""Hit every few seconds by health checks and scrapers: left out of the HTTP latency figures,
and their access lines are written at debug unless they fail."""

_ERRORS = openapi_responses(ErrorResponse)

rerank_router = APIRouter(
    tags=["rerank"],
    # The body's shape first: TEI's requests get every error in TEI's shape, the key's too.
    dependencies=[Depends(note_wire_shape), Depends(require_api_key), Depends(require_json_body)],
    responses=_ERRORS,
)
ops_router = APIRouter(tags=["operations"])
metrics_router = APIRouter(tags=["operations"])
"""``/metrics`` on the API port; left out when the metrics have a port of their own."""


def _json(model: BaseModel | list[TeiRank]) -> Response:
    """Serialized here, once, by pydantic-core: handing FastAPI the model would validate it
    again against the response model before encoding it. The route's response_model still
    documents the shape."""
    if isinstance(model, list):
        return Response(_TEI_RANKS.dump_json(model, exclude_none=True), media_type=_JSON)
    return Response(model.model_dump_json(exclude_none=True), media_type=_JSON)


def _rerank_endpoint(api_version: str) -> Any:
    @with_cancellation  # reads ``request`` to watch for the client's disconnect
    async def endpoint(
        body: RerankRequest, request: Request, context: RerankContextDep
    ) -> Response:
        with context.lifecycle.serving():
            return _json(await rerank(body, context, api_version))

    return endpoint


@with_cancellation
async def _rerank_or_tei(
    body: Annotated[AnyRerankRequest, Body()], request: Request, context: RerankContextDep
) -> Response:
    """``/rerank``: Cohere v1 / Jina, or TEI's shape when the body has ``texts``."""
    with context.lifecycle.serving():
        if isinstance(body, TeiRerankRequest):
            return _json(await tei_rerank(body, context))
        return _json(await rerank(body, context, "1"))


@with_cancellation
async def _score(body: ScoreRequest, request: Request, context: RerankContextDep) -> Response:
    with context.lifecycle.serving():
        return _json(await score_pairs(body, context))


_RERANK_ROUTES = (
    ("/v1/rerank", "1", "Rerank documents (Cohere v1 / Jina shape)"),
    ("/v2/rerank", "2", "Rerank documents (Cohere v2 shape)"),
)
SCORE_PATH = "/score"

rerank_router.add_api_route(
    "/rerank",
    _rerank_or_tei,
    methods=["POST"],
    response_model=RerankResponse | list[TeiRank],
    response_model_exclude_none=True,
    summary="Rerank documents (Cohere v1 / Jina shape; TEI's when the body has texts)",
    description="With `documents`: the Cohere v1 / Jina shape. With `texts`: Text Embeddings "
    "Inference's, answered with a bare list of `{index, score, text?}`, best first, and errors "
    "as `{error, error_type}`.",
    operation_id="rerank",
    name="rerank",
    # A TEI-shaped request's errors come in TEI's shape.
    responses={
        code: {**answer, "model": ErrorResponse | TeiErrorResponse}
        for code, answer in _ERRORS.items()
    },
)
for _path, _api_version, _summary in _RERANK_ROUTES:
    rerank_router.add_api_route(
        _path,
        _rerank_endpoint(_api_version),
        methods=["POST"],
        response_model=RerankResponse,
        response_model_exclude_none=True,
        summary=_summary,
        operation_id="rerank" + _path.replace("/", "_").removesuffix("_rerank"),
        name="rerank",
    )
rerank_router.add_api_route(
    SCORE_PATH,
    _score,
    methods=["POST"],
    response_model=ScoreResponse,
    summary="Score (query, document) pairs (vLLM's /score shape)",
    description="Each `text_2` entry against its own `text_1` entry, or all against one. "
    "Scores in request order; the same queue, batching and metrics as rerank.",
    operation_id="score",
    name="score",
)

SCORING_SPANS: Final[Mapping[str, str]] = {
    route.path: route.name for route in rerank_router.routes if isinstance(route, APIRoute)
}
"""Every route of the scoring router, with the name its span takes (``rerank``, ``score``)."""
RERANK_PATHS: Final = frozenset(SCORING_SPANS)
"""Routes that score: each request on them gets a record and its telemetry."""


@ops_router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse, "description": "A device failed for good"}},
    summary="Liveness: 200 while the process serves; 503 once a device has failed for good",
)
async def health(lifecycle: LifecycleDep) -> JSONResponse:
    lost = lifecycle.models.lost_devices if lifecycle.models is not None else {}
    if lost:
        # A sticky device error fails every later pass on it: only a restart serves again.
        body = HealthResponse(status="failed", failed_devices=lost)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return JSONResponse({"status": "ok"})


@ops_router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Loading, draining, or failed"}},
    summary="Readiness: 200 once the model is loaded and warm",
)
async def ready(lifecycle: LifecycleDep) -> JSONResponse:
    phase = lifecycle.phase
    if phase == "ready" and lifecycle.models is not None and lifecycle.models.lost_devices:
        return JSONResponse({"status": "failed"}, status_code=503)
    status_code = 200 if phase == "ready" else 503
    return JSONResponse({"status": phase}, status_code=status_code)


def _cache_info(cache: ScoreCache | None, settings: Settings) -> CacheInfo:
    """The cache's stores as built (the names they give themselves), with its settings."""
    return CacheInfo(
        backend=cache.backend if cache is not None else "off",
        size=settings.cache_size,
        ttl_seconds=settings.cache_ttl_seconds,
        redis=cache is not None and cache.shared,
    )


def _devices(engine: RerankEngine) -> list[ServedDevice]:
    runners = {
        status.device: RunnerInfo(
            name=status.runner.name,
            compiled=status.runner.compiled,
            cuda_graphs=status.runner.cuda_graphs,
            compile_state=status.compile.state,
            compile_seconds=status.compile.seconds,
            compile_stage=status.compile.stage,
            compile_error=status.compile.reason,
        )
        for status in engine.runner_statuses()
    }
    return [
        ServedDevice(name=served.device, uuid=served.device_uuid, runner=runners.get(served.device))
        for served in engine.descriptions
    ]


def _model_info(served: ServedEngine, default_instruction: str) -> ModelInfo:
    engine = served.engine
    model = engine.description
    memory = engine.device_memory()
    return ModelInfo(
        name=served.name,
        aliases=list(served.aliases),
        checkpoint=model.model,
        kind=model.kind,
        architecture=model.architecture,
        revision=model.revision,
        dtype=model.dtype,
        devices=_devices(engine),
        max_length=engine.limits.max_length,
        max_batch_tokens=engine.limits.max_batch_tokens,
        max_queued_pairs=engine.limits.max_queued_pairs,
        prefix_reuse=engine.prefix_reuse,
        takes_instruction=engine.takes_instruction,
        default_instruction=(
            served.default_instruction or default_instruction if engine.takes_instruction else None
        ),
        weight_bytes=model.weight_bytes,
        device_memory_allocated_bytes=(
            sum(reading.allocated_bytes for reading in memory) if memory else None
        ),
    )


@ops_router.get("/info", response_model=InfoResponse, summary="What is served, with its limits")
async def info(models: ModelsDep, settings: SettingsDep, cache: ScoreCacheDep) -> InfoResponse:
    default = models.default
    engine = default.engine
    model = engine.description
    return InfoResponse(
        model=default.name,
        models=[_model_info(served, settings.default_instruction) for served in models],
        revision=model.revision,
        device=",".join(served.device for served in engine.descriptions),
        devices=_devices(engine),
        dtype=model.dtype,
        dtype_choice=(
            DtypeChoiceInfo(
                reason=choice.reason,
                cpu_flags=list(choice.cpu_flags),
                self_check_max_difference=choice.self_check_max_difference,
            )
            if (choice := model.dtype_choice) is not None
            else None
        ),
        max_length=engine.limits.max_length,
        max_documents=settings.max_documents,
        max_chunks_per_doc=settings.max_chunks_per_doc,
        max_chunks_limit=settings.max_chunks_limit,
        max_request_pairs=settings.request_pairs_limit,
        max_batch_tokens=engine.limits.max_batch_tokens,
        prefix_reuse=engine.prefix_reuse,
        max_queued_pairs=engine.limits.max_queued_pairs,
        max_request_bytes=settings.max_request_bytes,
        default_instruction=default.default_instruction or settings.default_instruction,
        auth_required=settings.api_key is not None,
        cache=_cache_info(cache, settings),
        version=__version__,
    )


@ops_router.get(
    "/v1/models",
    response_model=ModelList,
    summary="The served models, in OpenAI's list shape (LiteLLM, Open WebUI, vLLM clients)",
)
async def list_models(models: ModelsDep, lifecycle: LifecycleDep) -> ModelList:
    created = int(lifecycle.ready_at or 0)
    return ModelList(
        data=[
            ModelCard(
                id=name,
                created=created,
                root=served.engine.description.model,
                parent=None if name == served.name else served.name,
                max_model_len=served.engine.limits.max_length,
            )
            for served in models
            for name in served.names
        ]
    )


@metrics_router.get(METRICS_PATH, include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus text format, or OpenMetrics (which carries the latency exemplars) to a
    scraper whose ``Accept`` asks for it, as Prometheus does; gzipped when accepted."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encode(request.app.state.metrics.registry)
    headers = {"Vary": "Accept, Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=content_type, headers=headers)
