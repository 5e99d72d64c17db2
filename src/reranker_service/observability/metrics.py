"""The ``reranker_*`` metric catalog, in one place, on one registry per app.

Every family exists from the first scrape: labelled families get their label values created
here, so that ``rate()`` and ratios see a zero before the first event instead of no series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.gc_collector import GCCollector

from reranker_service.observability.gpu_metrics import GpuMetrics

if TYPE_CHECKING:
    from reranker_service.engine.scheduler.jobs import BatchReport
    from reranker_service.engine.scoring import ModelDescription
    from reranker_service.engine.upgrade import RunnerStatus

REQUEST_STATUSES: Final = ("success", "fail")
PRIORITY_CLASSES: Final = ("high", "normal", "low")
"""``reranker_queue_wait_seconds``'s ``priority``: below 0, 0, above 0."""
CACHE_LOOKUP_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
"""Up to a second: a lookup that waited out a Redis timeout (``RERANKER_CACHE_TIMEOUT_MS``,
which may be set to hundreds of milliseconds) lands in a bucket of its own."""
COMPILE_STATES: Final = ("off", "compiling", "compiled", "fallback")
"""``reranker_runner_compile_state``: nothing to compile; compiling in the background (the
eager runner serves); the compiled runner serves; it failed and the eager runner serves on."""


def priority_class(priority: int) -> str:
    return "high" if priority < 0 else "low" if priority > 0 else "normal"


CLIENT_ERROR_TYPES: Final = ("validation", "payload_too_large", "unauthorized")
"""Rejected before any work: not counted in ``reranker_requests_total``."""
SERVER_ERROR_TYPES: Final = (
    "overloaded",
    "timeout",
    "oom",
    "internal",
    "client_disconnected",
    "unavailable",
)
"""Accepted requests that got no answer: ``reranker_requests_total{status="fail"}``."""
ERROR_TYPES: Final = CLIENT_ERROR_TYPES + SERVER_ERROR_TYPES
UNROUTED: Final = ""
"""The ``model`` label of a request refused before a model was chosen for it (no key, a body
too large, a model not served, not ready): Prometheus stores the series without the label."""

EXEMPLAR_TRACE_LABEL: Final = "trace_id"
"""The label of the trace id on the latency buckets' exemplars (Grafana's Prometheus datasource
links it to the trace backend by this name)."""

LATENCY_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
QUEUE_WAIT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
INFERENCE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
DOCUMENT_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
REQUEST_TOKEN_BUCKETS: Final = (
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
)  # fmt: skip
DOCUMENT_WINDOW_BUCKETS: Final = (1, 2, 3, 4, 6, 8, 12, 16, 32, 64)
BATCH_SIZE_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
BATCH_TOKEN_BUCKETS: Final = tuple(float(2**power) for power in range(6, 18))  # 64 .. 131072
TOP1_SCORE_BUCKETS: Final = (*(round(0.05 * step, 2) for step in range(1, 20)), 0.99)
SCORE_SPREAD_BUCKETS: Final = (
    0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
)  # fmt: skip


class ServiceMetrics:
    """The published catalog (docs/observability.md; dashboards and alert rules depend on its
    names), the GPU families in ``gpu``. Request, queue, batch and score families carry the
    served model's name as ``model``: configured names only, so the label stays bounded.

    HTTP outcomes are recorded by the rerank telemetry middleware, batches by the engine's
    observer (on the worker thread; prometheus_client is thread-safe), GPU gauges by the NVML
    poller.
    """

    def __init__(
        self, registry: CollectorRegistry | None = None, models: Sequence[str] = ()
    ) -> None:
        """``models``: the served models' names, the ``model`` label's values."""
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        self.requests = Counter(
            "reranker_requests",
            "Rerank requests that passed validation, by outcome; fail = accepted but not answered",
            ["status", "model"],
            registry=registry,
        )
        self.request_errors = Counter(
            "reranker_request_errors",
            "Rerank requests answered with a non-2xx status (or not at all), by cause",
            ["type", "model"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "reranker_request_latency_seconds",
            "End-to-end server time of successful rerank requests",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_documents = Histogram(
            "reranker_request_documents",
            "Documents per successful rerank request",
            ["model"],
            buckets=DOCUMENT_BUCKETS,
            registry=registry,
        )
        self.request_tokens = Histogram(
            "reranker_request_tokens",
            "Tokens fed to the model per successful request: prompt-wrapped, truncated pairs",
            ["model"],
            buckets=REQUEST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "reranker_queue_wait_seconds",
            "Time a pair waits in the batching queue before its forward pass starts, by its "
            "request's priority class (high < 0, normal 0, low > 0)",
            ["priority", "model"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "reranker_inference_seconds",
            "Forward-pass time per batch, by the worker's device",
            ["device", "model"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "reranker_batch_size",
            "Pairs per forward pass, by the worker's device",
            ["device", "model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "reranker_batch_tokens",
            "Tokens computed per forward pass as its model runner costs them, padding included "
            "where it pads (shared prefixes computed in the pass count once, cached ones not at "
            "all), by the worker's device",
            ["device", "model"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=registry,
        )
        self.cache_lookups = Counter(
            "reranker_cache_lookups",
            "Pairs looked up in the score cache, by result",
            ["result", "model"],
            registry=registry,
        )
        self.cache_errors = Counter(
            "reranker_cache_errors",
            "Score-cache operations that failed (scored as misses: the cache fails open), by "
            "backend",
            ["backend"],
            registry=registry,
        )
        self.cache_entries = Gauge(
            "reranker_cache_entries", "Scores held in the in-process cache", registry=registry
        )
        self.cache_evictions = Counter(
            "reranker_cache_evictions",
            "Scores the in-process cache dropped for room (not expiry)",
            registry=registry,
        )
        self.cache_skipped = Counter(
            "reranker_cache_skipped",
            "Score-cache lookups and writes not sent to a store because its circuit breaker "
            "was open (a lookup's pairs miss at once), by backend",
            ["backend"],
            registry=registry,
        )
        self.cache_breaker_open = Gauge(
            "reranker_cache_breaker_open",
            "1 while a store's circuit breaker is open: after failures in a row, the store is "
            "skipped until a probe gets an answer; 0 otherwise, by backend",
            ["backend"],
            registry=registry,
        )
        self.cache_lookup_seconds = Histogram(
            "reranker_cache_lookup_seconds",
            "Time a request's score-cache lookup took (all its pairs, every store)",
            buckets=CACHE_LOOKUP_BUCKETS,
            registry=registry,
        )
        self.document_windows = Histogram(
            "reranker_document_windows",
            "Pairs each document of a successful request was scored as: 1, or the windows a long "
            "document was split into (max_chunks_per_doc)",
            ["model"],
            buckets=DOCUMENT_WINDOW_BUCKETS,
            registry=registry,
        )
        self.prefix_tokens_reused = Counter(
            "reranker_prefix_tokens_reused",
            "Prompt tokens not recomputed: read from the request's shared-prefix cache",
            ["model"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "reranker_queue_depth", "Pairs waiting for a forward pass", ["model"], registry=registry
        )
        self.max_queued_pairs = Gauge(
            "reranker_max_queued_pairs",
            "Pairs that may wait before new requests get 429 (RERANKER_MAX_QUEUED_PAIRS)",
            ["model"],
            registry=registry,
        )
        self.inflight_requests = Gauge(
            "reranker_inflight_requests", "Rerank requests being served", registry=registry
        )
        self.top1_score = Histogram(
            "reranker_top1_score",
            "Best relevance score of each successful request (watch for quality drift)",
            ["model"],
            buckets=TOP1_SCORE_BUCKETS,
            registry=registry,
        )
        self.score_stddev = Histogram(
            "reranker_score_stddev",
            "Standard deviation of each request's scores (requests with two or more documents)",
            ["model"],
            buckets=SCORE_SPREAD_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "reranker_model_info",
            "The model being served, one series per worker; always 1",
            ["model", "revision", "device", "dtype", "checkpoint", "kind"],
            registry=registry,
        )

        self.runner_info = Gauge(
            "reranker_runner_info",
            "The runner serving now on each worker: padded or packed, compiled, replaying CUDA "
            "graphs (changes when a background compile swaps in, or falls back); always 1",
            ["model", "device", "runner", "compiled", "cuda_graphs"],
            registry=registry,
        )
        self.runner_compile_state = Enum(
            "reranker_runner_compile_state",
            "Where each worker's compiled runner stands: off, compiling (the eager runner "
            "serves), compiled (it serves), fallback (it failed; the eager runner serves on)",
            ["model", "device"],
            states=list(COMPILE_STATES),
            registry=registry,
        )
        self.runner_compile_seconds = Gauge(
            "reranker_runner_compile_seconds",
            "Seconds each worker's compiled runner took from the start of compiling to serving "
            "(or to its failure); 0 until then",
            ["model", "device"],
            registry=registry,
        )

        self.gpu = GpuMetrics(registry)
        self._runner_info_labels: dict[tuple[str, str], tuple[str, ...]] = {}
        self._runner_info_lock = threading.Lock()
        self._model_info_labels: dict[str, list[tuple[str, ...]]] = {}
        for model in (UNROUTED, *models):
            self._add_model(model)

    def _add_model(self, model: str) -> None:
        """A model's series at zero: its requests' (``UNROUTED``: requests refused before one
        was chosen: errors only), and a served model's queue and score families."""
        for error_type in ERROR_TYPES:
            self.request_errors.labels(type=error_type, model=model)
        for status in REQUEST_STATUSES:
            self.requests.labels(status=status, model=model)
        if model == UNROUTED:
            return
        for priority in PRIORITY_CLASSES:
            self.queue_wait.labels(priority=priority, model=model)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result=result, model=model)
        for family in (
            self.request_latency,
            self.request_documents,
            self.request_tokens,
            self.document_windows,
            self.prefix_tokens_reused,
            self.top1_score,
            self.score_stddev,
        ):
            family.labels(model=model)

    # -- facts from the engines --------------------------------------------------------------

    def batch_observer(self, model: str) -> Callable[[BatchReport], None]:
        """The batch observer of ``model``'s engine, called on its worker threads."""

        def observe(report: BatchReport) -> None:
            device = report.device
            self.batch_size.labels(device=device, model=model).observe(report.pairs)
            self.batch_tokens.labels(device=device, model=model).observe(report.padded_tokens)
            self.inference.labels(device=device, model=model).observe(report.inference_seconds)
            self.prefix_tokens_reused.labels(model=model).inc(report.reused_tokens)
            priorities = report.queue_wait_priorities or (0,) * len(report.queue_wait_seconds)
            for wait, priority in zip(report.queue_wait_seconds, priorities, strict=True):
                waits = self.queue_wait.labels(priority=priority_class(priority), model=model)
                waits.observe(wait)

        return observe

    def set_runner(self, model: str, status: RunnerStatus) -> None:
        """A worker's runner and compile state now (from any thread)."""
        runner = status.runner
        labels = (
            model,
            status.device,
            runner.name,
            str(runner.compiled).lower(),
            str(runner.cuda_graphs).lower(),
        )
        worker = (model, status.device)
        with self._runner_info_lock:
            previous = self._runner_info_labels.get(worker)
            if previous not in (None, labels):
                self.runner_info.remove(*previous)
            self._runner_info_labels[worker] = labels
            self.runner_info.labels(*labels).set(1)
        self.runner_compile_state.labels(model=model, device=status.device).state(
            status.compile.state
        )
        seconds = status.compile.seconds
        self.runner_compile_seconds.labels(model=model, device=status.device).set(seconds or 0.0)

    def watch_queue(
        self, model: str, read_queued_pairs: Callable[[], int], max_queued_pairs: int
    ) -> None:
        """Depth is read at scrape time, so the gauge is never stale."""
        self.queue_depth.labels(model=model).set_function(read_queued_pairs)
        self.max_queued_pairs.labels(model=model).set(max_queued_pairs)

    def set_workers(self, model: str, workers: Sequence[ModelDescription]) -> None:
        """What each worker of ``model`` serves: a ``reranker_model_info`` series per worker,
        and its per-pass families at zero before its first pass."""
        for labels in self._model_info_labels.pop(model, []):
            self.model_info.remove(*labels)
        for worker in workers:
            labels = (
                model,
                worker.revision,
                worker.device,
                worker.dtype,
                worker.model,
                worker.kind,
            )
            self.model_info.labels(*labels).set(1)
            self._model_info_labels.setdefault(model, []).append(labels)
            for family in (self.inference, self.batch_size, self.batch_tokens):
                family.labels(device=worker.device, model=model)

    # -- facts from the HTTP layer ------------------------------------------------------------

    def record_success(
        self,
        *,
        model: str,
        latency_seconds: float,
        documents: int,
        tokens: int,
        top1_score: float | None,
        score_stddev: float | None,
        windows: Sequence[int] = (),
        trace_id: str | None = None,
    ) -> None:
        """``trace_id``: the request's sampled trace, kept as the latency bucket's exemplar
        (served in the OpenMetrics format only)."""
        self.requests.labels(status="success", model=model).inc()
        document_windows = self.document_windows.labels(model=model)
        for count in windows:
            document_windows.observe(count)
        self.request_latency.labels(model=model).observe(
            latency_seconds,
            exemplar={EXEMPLAR_TRACE_LABEL: trace_id} if trace_id is not None else None,
        )
        self.request_documents.labels(model=model).observe(documents)
        self.request_tokens.labels(model=model).observe(tokens)
        if top1_score is not None:
            self.top1_score.labels(model=model).observe(top1_score)
        if score_stddev is not None:
            self.score_stddev.labels(model=model).observe(score_stddev)

    def record_cache_lookup(self, model: str, hits: int, misses: int, seconds: float) -> None:
        """One request's lookup: its pairs found and not, and what it took."""
        self.cache_lookups.labels(result="hit", model=model).inc(hits)
        self.cache_lookups.labels(result="miss", model=model).inc(misses)
        self.cache_lookup_seconds.observe(seconds)

    def watch_cache_entries(self, read_entries: Callable[[], int]) -> None:
        self.cache_entries.set_function(read_entries)

    def add_cache_backends(self, backends: Sequence[str]) -> None:
        """The score cache's kinds of store: their ``backend`` series at zero from the start."""
        for backend in backends:
            for family in (self.cache_errors, self.cache_skipped, self.cache_breaker_open):
                family.labels(backend=backend)

    def record_error(self, error_type: str, model: str = UNROUTED) -> None:
        """Count a non-2xx outcome; ``error_type`` must be one of ``ERROR_TYPES``, ``model``
        a served model's name or ``UNROUTED``."""
        self.request_errors.labels(type=error_type, model=model).inc()
        if error_type in SERVER_ERROR_TYPES:
            self.requests.labels(status="fail", model=model).inc()
