"""The application factory; the lifespan owns the engine, its worker threads and the pollers."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import structlog
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_fastapi_instrumentator import Instrumentator

from reranker_service import __version__
from reranker_service.api.deps import RerankOptions
from reranker_service.api.errors import install_error_handlers
from reranker_service.api.lifecycle import Lifecycle
from reranker_service.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from reranker_service.api.record import RecordMiddleware
from reranker_service.api.request_spans import RequestSpans
from reranker_service.api.routes import (
    PROBE_PATHS,
    RERANK_PATHS,
    SCORING_SPANS,
    metrics_router,
    ops_router,
    rerank_router,
)
from reranker_service.api.telemetry import (
    EXPOSED_HEADERS,
    RequestLogPolicy,
    RerankTelemetryMiddleware,
)
from reranker_service.cache_stores import (
    STORE_NAMES,
    StoreContext,
    build_score_cache,
    model_identity,
)
from reranker_service.engine.cache_breaker import BREAKER_POLICY, BreakerPolicy
from reranker_service.engine.model_set import ModelSet, ServedEngine
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scheduler.jobs import BatchObserver, BatchReport
from reranker_service.engine.score_cache import CacheEvents, ScoreCache
from reranker_service.model_specs import ModelSpec
from reranker_service.observability.gpu import GpuPoller, NvmlLibrary, load_nvml
from reranker_service.observability.metrics import ServiceMetrics
from reranker_service.observability.tracing import Tracing
from reranker_service.settings import Settings

if TYPE_CHECKING:
    from reranker_service.engine.loading import LoadOptions

logger = structlog.get_logger(__name__)


class StartupError(Exception):
    """Something the service needs at start-up cannot be had; the message is for the operator."""


def load_options(settings: Settings, spec: ModelSpec | None = None) -> LoadOptions:
    """How to load ``spec`` (the default model where None)."""
    from reranker_service.engine.loading import LoadOptions
    from reranker_service.engine.runner.build import RunnerOptions

    spec = spec or settings.model_specs[0]
    return LoadOptions(
        model=spec.model,
        revision=spec.revision,
        device=spec.device,
        dtype=spec.dtype,
        max_length=spec.max_length,
        runner=RunnerOptions(
            runner=settings.runner,
            compile=settings.compile,
            compile_cache=Path(settings.compile_cache),
            max_batch_tokens=spec.max_batch_tokens,
        ),
        prompt=spec.prompt,
    )


def engine_config(
    settings: Settings, spec: ModelSpec | None = None, *, device_share: int = 1
) -> EngineConfig:
    """``device_share``: how many served models share its busiest GPU."""
    spec = spec or settings.model_specs[0]
    return EngineConfig(
        max_batch_tokens=spec.max_batch_tokens,
        max_queued_pairs=settings.max_queued_pairs,
        largest_request_pairs=settings.request_pairs_limit,
        tokenizer_threads=settings.tokenizer_threads,
        prefix_reuse=settings.prefix_reuse,
        priority_max_wait_seconds=settings.priority_max_wait_seconds,
        device_share=device_share,
    )


def load_models(settings: Settings) -> dict[str, ServedModel]:
    """Every served model, loaded in the settings' order (blocking: minutes for big ones)."""
    from reranker_service.engine.loading import load_model

    return {spec.name: load_model(load_options(settings, spec)) for spec in settings.model_specs}


def device_shares(models: Mapping[str, ServedModel]) -> dict[str, int]:
    """For each model, how many served models have a worker on its busiest GPU: the pass
    budget of each, where the operator set none, is that share of the GPU's (the CPU's memory
    is not divided)."""
    on_gpu = {
        name: {
            runner.description.device
            for runner in served.runners
            if runner.description.device_type == "cuda"
        }
        for name, served in models.items()
    }
    sharing: dict[str, int] = {}
    for devices in on_gpu.values():
        for device in devices:
            sharing[device] = sharing.get(device, 0) + 1
    return {
        name: max((sharing[device] for device in devices), default=1)
        for name, devices in on_gpu.items()
    }


def _cache_events(metrics: ServiceMetrics) -> CacheEvents:
    """What the score cache's stores report, into the metrics."""
    return CacheEvents(
        on_error=lambda backend: metrics.cache_errors.labels(backend=backend).inc(),
        on_evictions=metrics.cache_evictions.inc,
        on_skipped=lambda backend: metrics.cache_skipped.labels(backend=backend).inc(),
        on_breaker_open=lambda backend, is_open: metrics.cache_breaker_open.labels(
            backend=backend
        ).set(int(is_open)),
        watch_entries=metrics.watch_cache_entries,
    )


def _observe_batches(observers: list[BatchObserver]) -> BatchObserver | None:
    if len(observers) <= 1:
        return observers[0] if observers else None

    def observe(report: BatchReport) -> None:
        for observer in observers:
            observer(report)

    return observe


@contextlib.asynccontextmanager
async def _metrics_server(settings: Settings, metrics: ServiceMetrics) -> AsyncIterator[None]:
    """``/metrics`` on a port of its own, so that the API port can face clients while only
    the monitoring network reaches the metrics."""
    if settings.metrics_port is None:
        yield
        return
    try:
        server, thread = start_http_server(
            settings.metrics_port, addr=settings.host, registry=metrics.registry
        )
    except OSError as exc:
        raise StartupError(
            f"cannot serve /metrics on {settings.host}:{settings.metrics_port} "
            f"(RERANKER_METRICS_PORT): {exc.strerror or exc}"
        ) from exc
    logger.info("metrics_server_started", host=settings.host, port=settings.metrics_port)
    try:
        yield
    finally:
        # shutdown() blocks until the serving thread has left its loop: off the event loop.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        await asyncio.to_thread(thread.join)


def create_app(
    settings: Settings,
    *,
    model: ServedModel | None = None,
    models: Mapping[str, ServedModel] | None = None,
    batch_observer: BatchObserver | None = None,
    registry: CollectorRegistry | None = None,
    nvml: NvmlLibrary | None = None,
    instrument_requests: bool = True,
    tracing: Tracing | None = None,
    cache_breaker_policy: BreakerPolicy = BREAKER_POLICY,
    cache_clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the app. Pass ``models`` (by served name, every one of ``settings.model_specs``),
    or ``model`` for the default one alone, to serve models already loaded (the CLI loads them
    first so that a bad checkpoint fails before the port opens); otherwise the lifespan loads
    them.

    Each app has its own metrics registry (``registry``, or a new one). ``nvml`` replaces
    ``pynvml``. ``instrument_requests=False`` leaves out the per-request metrics and log lines;
    it exists to measure what they cost (``bench/``). With ``tracing``, requests are traced
    (see ``observability.tracing``); the app shuts it down, flushing its spans, when it stops.
    ``cache_breaker_policy`` says when the Redis store's circuit breaker opens and for how long
    (bench/ compares the shipped one with one that never opens); ``cache_clock`` is the score
    cache's clock (tests advance a fake one).
    """
    lifecycle = Lifecycle()
    specs = settings.model_specs
    metrics = ServiceMetrics(registry, models=[spec.name for spec in specs])
    metrics.add_cache_backends(STORE_NAMES)
    if model is not None:
        models = {specs[0].name: model}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Every resource is stopped, in reverse order of start, whatever fails after it."""
        async with contextlib.AsyncExitStack() as resources:
            if tracing is not None:  # last out: the spans of the drained requests still go
                resources.push_async_callback(asyncio.to_thread, tracing.shutdown)
            try:
                served_models = await _start(app, resources)
            except Exception as exc:
                logger.error("startup_failed", error=str(exc), error_type=type(exc).__name__)
                raise
            # Runs first on the way out: new work gets 503 while the engine finishes its queue.
            resources.callback(lifecycle.begin_draining)
            yield
        logger.info("shutdown", pending_pairs=served_models.queued_pairs)

    async def _loaded() -> Mapping[str, ServedModel]:
        if models is not None:
            missing = [spec.name for spec in specs if spec.name not in models]
            if missing:
                raise StartupError(f"models {missing} were not loaded")
            return models
        return await asyncio.to_thread(load_models, settings)

    def _engine(
        spec: ModelSpec, served: ServedModel, cache: ScoreCache | None, share: int
    ) -> RerankEngine:
        observers: list[BatchObserver] = []
        if instrument_requests:
            observers.append(metrics.batch_observer(spec.name))
        if batch_observer is not None:
            observers.append(batch_observer)
        metrics.set_workers(spec.name, [runner.description for runner in served.runners])
        engine = RerankEngine(
            served,
            engine_config(settings, spec, device_share=share),
            observer=_observe_batches(observers),
            score_cache=cache,
            runner_observer=lambda status: metrics.set_runner(spec.name, status),
        )
        for status in engine.runner_statuses():
            metrics.set_runner(spec.name, status)
        metrics.watch_queue(spec.name, lambda: engine.queued_pairs, engine.limits.max_queued_pairs)
        return engine

    async def _start(app: FastAPI, resources: contextlib.AsyncExitStack) -> ModelSet:
        loaded = await _loaded()
        await resources.enter_async_context(_metrics_server(settings, metrics))
        shares = device_shares(loaded)
        first_cache = build_score_cache(
            settings,
            loaded[specs[0].name].description,
            StoreContext(_cache_events(metrics), cache_clock, cache_breaker_policy),
        )
        app.state.score_cache = first_cache
        served_engines = []
        for spec in specs:
            served = loaded[spec.name]
            cache = first_cache
            if first_cache is not None and spec is not specs[0]:
                cache = first_cache.for_model(model_identity(served.description))
            engine = _engine(spec, served, cache, shares[spec.name])
            resources.push_async_callback(engine.stop)
            served_engines.append(
                ServedEngine(spec.name, engine, spec.aliases, spec.default_instruction)
            )
        model_set = ModelSet(served_engines)
        engines = [entry.engine for entry in model_set]
        gpu_poller = GpuPoller(
            metrics,
            interval_seconds=settings.gpu_poll_seconds,
            nvml=nvml if nvml is not None else load_nvml(),
            read_device_memory=lambda: list(
                {
                    reading.device: reading
                    for engine in engines
                    for reading in engine.device_memory()
                }.values()
            ),
            served_gpus={
                worker.device_uuid: worker.device
                for engine in engines
                for worker in engine.descriptions
                if worker.device_uuid is not None
            },
        )
        gpu_poller.start()
        resources.push_async_callback(gpu_poller.stop)
        for engine in engines:
            await engine.start()
        lifecycle.models = model_set
        lifecycle.ready_at = time.time()
        if lifecycle.phase == "loading":  # a stop signal during start-up wins
            lifecycle.phase = "ready"
        for entry in model_set:
            engine = entry.engine
            logger.info(
                "service_ready",
                model=entry.name,
                max_length=engine.limits.max_length,
                max_batch_tokens=engine.limits.max_batch_tokens,
                max_queued_pairs=engine.limits.max_queued_pairs,
                batch_saturation_tokens=engine.pass_costs.saturation_tokens(),
            )
        return model_set

    # /docs and /redoc load their JavaScript and CSS from this process, not from a CDN: they
    # work on an air-gapped machine, where rerankers often run.
    app = FastAPIOffline(
        title="Qwen3 reranker service",
        version=__version__,
        description=(
            "Scores (query, document) pairs with Qwen3-Reranker exactly as its model card does. "
            "Cohere v1/v2 and Jina compatible rerank routes."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.rerank_options = RerankOptions.from_settings(settings)
    app.state.lifecycle = lifecycle
    app.state.metrics = metrics
    app.state.score_cache = None  # built with the engine, when the model is in
    install_error_handlers(app)
    app.include_router(rerank_router)
    app.include_router(ops_router)
    _install_middleware(
        app, settings, metrics, instrument_requests=instrument_requests, tracing=tracing
    )
    return app


def _request_spans(settings: Settings, tracing: Tracing | None) -> RequestSpans | None:
    if tracing is None:
        return None
    return RequestSpans(
        tracing.provider.get_tracer("reranker_service", __version__),
        span_names=SCORING_SPANS,
        query_chars=settings.log_query_chars,
    )


def _install_middleware(
    app: FastAPI,
    settings: Settings,
    metrics: ServiceMetrics,
    *,
    instrument_requests: bool,
    tracing: Tracing | None,
) -> None:
    """Each ``add_middleware`` wraps the ones before it: the request id exists first, the
    telemetry sees every rerank outcome including the body-size 413, and the size check runs
    last. The HTTP server span of the tracing instrumentation is outside them all, so that it
    covers the whole request and an incoming ``traceparent`` is its parent."""
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_request_bytes)
    instrumentator = Instrumentator(
        registry=metrics.registry,
        # Probes and scrapes would drown the HTTP latency figures of real traffic.
        excluded_handlers=[f"^{re.escape(path)}$" for path in sorted(PROBE_PATHS)],
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
            spans=_request_spans(settings, tracing),
        )
        instrumentator.instrument(app)
    else:
        app.add_middleware(RecordMiddleware, paths=RERANK_PATHS)
    if settings.metrics_port is None:
        app.include_router(metrics_router)
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
    if tracing is not None:
        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=tracing.provider,
            excluded_urls=tracing.excluded_urls,
            # Not a span per ASGI message: they say nothing the server span does not.
            exclude_spans=["receive", "send"],
        )
