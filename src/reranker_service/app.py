"""The application factory; the lifespan owns the engine and its worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_fastapi_instrumentator import Instrumentator

from reranker_service import __version__
from reranker_service.api.errors import install_error_handlers
from reranker_service.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from reranker_service.api.routes import RERANK_PATHS, ops_router, rerank_router
from reranker_service.api.state import ServiceState
from reranker_service.api.telemetry import (
    EXPOSED_HEADERS,
    RequestLogPolicy,
    RerankTelemetryMiddleware,
)
from reranker_service.engine.batcher import BatchObserver, BatchReport
from reranker_service.engine.service import EngineConfig, RerankEngine
from reranker_service.observability.gpu import GpuPoller, NvmlLibrary, load_nvml
from reranker_service.observability.metrics import ServiceMetrics
from reranker_service.settings import Settings

if TYPE_CHECKING:
    from reranker_service.engine.model import LoadOptions, ScoringModel

logger = structlog.get_logger(__name__)

# Probes and scrapes would drown the HTTP latency figures of real traffic.
_UNTIMED_HANDLERS = ["^/metrics$", "^/health$", "^/ready$"]


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


def _observe_batches(observers: list[BatchObserver]) -> BatchObserver | None:
    if len(observers) <= 1:
        return observers[0] if observers else None

    def observe(report: BatchReport) -> None:
        for observer in observers:
            observer(report)

    return observe


def create_app(
    settings: Settings,
    *,
    model: ScoringModel | None = None,
    batch_observer: BatchObserver | None = None,
    registry: CollectorRegistry | None = None,
    nvml: NvmlLibrary | None = None,
    instrument_requests: bool = True,
) -> FastAPI:
    """Build the app. Pass ``model`` to serve an already loaded one (the CLI loads it first so
    that a bad checkpoint fails before the port opens); otherwise the lifespan loads it.

    Each app has its own metrics registry (``registry``, or a new one). ``nvml`` replaces
    ``pynvml``. ``instrument_requests=False`` leaves out the per-request metrics and log lines;
    it exists to measure what they cost (``bench/``).
    """
    state = ServiceState()
    metrics = ServiceMetrics(registry)
    observers: list[BatchObserver] = [metrics.observe_batch] if instrument_requests else []
    if batch_observer is not None:
        observers.append(batch_observer)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scoring_model = model if model is not None else await _load_model(settings)
        described = scoring_model.description
        metrics.set_model_info(
            model=described.model,
            revision=described.revision,
            device=described.device,
            dtype=described.dtype,
        )
        engine = RerankEngine(
            scoring_model,
            EngineConfig(
                max_batch_tokens=settings.max_batch_tokens,
                max_queued_pairs=settings.queued_pairs_limit,
                tokenizer_threads=settings.tokenizer_threads,
            ),
            observer=_observe_batches(observers),
        )
        metrics.watch_queue(lambda: engine.queued_pairs, engine.limits.max_queued_pairs)
        gpu_poller = GpuPoller(
            metrics,
            interval_seconds=settings.gpu_poll_seconds,
            nvml=nvml if nvml is not None else load_nvml(),
            read_device_memory=engine.device_memory,
        )
        gpu_poller.start()
        metrics_server = _start_metrics_server(settings, metrics)
        try:
            await engine.start()
            state.engine = engine
            if state.phase == "loading":  # a stop signal during start-up wins
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
            await gpu_poller.stop()
            if metrics_server is not None:
                await asyncio.to_thread(metrics_server.shutdown)
                metrics_server.server_close()
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
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(rerank_router)
    app.include_router(ops_router)
    # Each add_middleware wraps the ones before it: the request id exists first, the telemetry
    # sees every rerank outcome including the body-size 413, and the size check runs last.
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_request_bytes)
    instrumentator = Instrumentator(
        registry=metrics.registry,
        excluded_handlers=_UNTIMED_HANDLERS,
        should_ignore_untemplated=True,
    )
    if instrument_requests:
        app.add_middleware(
            RerankTelemetryMiddleware,
            metrics=metrics,
            log_policy=RequestLogPolicy(
                sample_rate=settings.log_sample_rate, query_chars=settings.log_query_chars
            ),
            paths=RERANK_PATHS,
        )
        instrumentator.instrument(app)
    if settings.metrics_port is None:
        instrumentator.expose(app, include_in_schema=False, should_gzip=True)
    app.add_middleware(RequestIdMiddleware)
    if settings.cors_origin_list:
        # Outermost: a browser's preflight is answered before the key is asked for.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=EXPOSED_HEADERS,
        )
    return app


def _start_metrics_server(settings: Settings, metrics: ServiceMetrics) -> WSGIServer | None:
    """``/metrics`` on a port of its own, so that the API port can face clients while only
    the monitoring network reaches the metrics."""
    if settings.metrics_port is None:
        return None
    server, _thread = start_http_server(
        settings.metrics_port, addr=settings.host, registry=metrics.registry
    )
    logger.info("metrics_server_started", host=settings.host, port=settings.metrics_port)
    return server
