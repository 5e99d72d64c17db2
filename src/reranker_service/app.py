"""The application factory; the lifespan owns the engine and its worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI

from reranker_service import __version__
from reranker_service.api.errors import install_error_handlers
from reranker_service.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from reranker_service.api.routes import ops_router, rerank_router
from reranker_service.api.state import ServiceState
from reranker_service.engine.batcher import BatchObserver
from reranker_service.engine.service import EngineConfig, RerankEngine
from reranker_service.settings import Settings

if TYPE_CHECKING:
    from reranker_service.engine.model import LoadOptions, ScoringModel

logger = structlog.get_logger(__name__)


def load_options(settings: Settings) -> LoadOptions:
    from reranker_service.engine.model import LoadOptions

    return LoadOptions(
        model=settings.model,
        revision=settings.revision,
        device=settings.device,
        dtype=settings.dtype,
        max_length=settings.max_length,
    )


async def _load_model(settings: Settings) -> ScoringModel:
    from reranker_service.engine.model import load_scoring_model

    return await asyncio.to_thread(load_scoring_model, load_options(settings))


def create_app(
    settings: Settings,
    *,
    model: ScoringModel | None = None,
    batch_observer: BatchObserver | None = None,
) -> FastAPI:
    """Build the app. Pass ``model`` to serve an already loaded one (the CLI loads it first so
    that a bad checkpoint fails before the port opens); otherwise the lifespan loads it."""
    state = ServiceState()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scoring_model = model if model is not None else await _load_model(settings)
        engine = RerankEngine(
            scoring_model,
            EngineConfig(
                max_batch_tokens=settings.max_batch_tokens,
                max_queued_pairs=settings.queued_pairs_limit,
                tokenizer_threads=settings.tokenizer_threads,
            ),
            observer=batch_observer,
        )
        try:
            await engine.start()
            state.engine = engine
            state.phase = "ready"
            logger.info(
                "service_ready",
                max_length=engine.limits.max_length,
                max_batch_tokens=engine.limits.max_batch_tokens,
                max_queued_pairs=engine.limits.max_queued_pairs,
                pass_overhead_tokens=engine.pass_overhead_tokens,
            )
            yield
        finally:
            state.begin_draining()
            await engine.stop()
            logger.info("shutdown", pending_pairs=engine.queued_pairs)

    app = FastAPI(
        title="Qwen3 reranker service",
        version=__version__,
        description=(
            "Scores (query, document) pairs with Qwen3-Reranker exactly as its model card does. "
            "Cohere v1/v2 and Jina compatible rerank routes."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.service = state
    install_error_handlers(app)
    app.include_router(rerank_router)
    app.include_router(ops_router)
    # Added last = outermost: the request id exists before the size check answers.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
