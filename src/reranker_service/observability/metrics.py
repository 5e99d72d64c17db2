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
    names) plus torch's view of device memory.

    HTTP outcomes are recorded by the rerank telemetry middleware, batches by the engine's
    observer (on the worker thread; prometheus_client is thread-safe), GPU gauges by the NVML
    poller.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        registry = self.registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

        self.requests = Counter(
            "reranker_requests",
            "Rerank requests that passed validation, by outcome; fail = accepted but not answered",
            ["status"],
            registry=registry,
        )
        self.request_errors = Counter(
            "reranker_request_errors",
            "Rerank requests answered with a non-2xx status (or not at all), by cause",
            ["type"],
            registry=registry,
        )
        self.request_latency = Histogram(
            "reranker_request_latency_seconds",
            "End-to-end server time of successful rerank requests",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_documents = Histogram(
            "reranker_request_documents",
            "Documents per successful rerank request",
            buckets=DOCUMENT_BUCKETS,
            registry=registry,
        )
        self.request_tokens = Histogram(
            "reranker_request_tokens",
            "Tokens fed to the model per successful request: prompt-wrapped, truncated pairs",
            buckets=REQUEST_TOKEN_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "reranker_queue_wait_seconds",
            "Time a pair waits in the batching queue before its forward pass starts, by its "
            "request's priority class (high < 0, normal 0, low > 0)",
            ["priority"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=registry,
        )
        self.inference = Histogram(
            "reranker_inference_seconds",
            "Forward-pass time per batch, by the worker's device",
            ["device"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "reranker_batch_size",
            "Pairs per forward pass, by the worker's device",
            ["device"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "reranker_batch_tokens",
            "Tokens computed per forward pass as its model runner costs them, padding included "
            "where it pads (shared prefixes computed in the pass count once, cached ones not at "
            "all), by the worker's device",
            ["device"],
            buckets=BATCH_TOKEN_BUCKETS,
            registry=registry,
        )
        self.cache_lookups = Counter(
            "reranker_cache_lookups",
            "Pairs looked up in the score cache, by result",
            ["result"],
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
            buckets=DOCUMENT_WINDOW_BUCKETS,
            registry=registry,
        )
        self.prefix_tokens_reused = Counter(
            "reranker_prefix_tokens_reused",
            "Prompt tokens not recomputed: read from the request's shared-prefix cache",
            registry=registry,
        )
        self.queue_depth = Gauge(
            "reranker_queue_depth", "Pairs waiting for a forward pass", registry=registry
        )
        self.max_queued_pairs = Gauge(
            "reranker_max_queued_pairs",
            "Pairs that may wait before new requests get 429 (RERANKER_MAX_QUEUED_PAIRS)",
            registry=registry,
        )
        self.inflight_requests = Gauge(
            "reranker_inflight_requests", "Rerank requests being served", registry=registry
        )
        self.top1_score = Histogram(
            "reranker_top1_score",
            "Best relevance score of each successful request (watch for quality drift)",
            buckets=TOP1_SCORE_BUCKETS,
            registry=registry,
        )
        self.score_stddev = Histogram(
            "reranker_score_stddev",
            "Standard deviation of each request's scores (requests with two or more documents)",
            buckets=SCORE_SPREAD_BUCKETS,
            registry=registry,
        )
        self.gpu_memory_used = Gauge(
            "reranker_gpu_memory_used_bytes",
            "GPU memory in use, all processes (NVML)",
            ["gpu"],
            registry=registry,
        )
        self.gpu_memory_total = Gauge(
            "reranker_gpu_memory_total_bytes", "GPU memory installed (NVML)", ["gpu"],
            registry=registry,
        )  # fmt: skip
        self.gpu_utilization = Gauge(
            "reranker_gpu_utilization_ratio",
            "Share of the last sample period in which a kernel ran on the GPU (NVML), 0-1",
            ["gpu"],
            registry=registry,
        )
        self.nvml_up = Gauge(
            "reranker_nvml_up", "1 if the last NVML poll worked, 0 otherwise", registry=registry
        )
        self.torch_memory_allocated = Gauge(
            "reranker_torch_memory_allocated_bytes",
            "Device memory held by live tensors of this process (torch.cuda)",
            ["device"],
            registry=registry,
        )
        self.torch_memory_reserved = Gauge(
            "reranker_torch_memory_reserved_bytes",
            "Device memory held by this process's caching allocator (torch.cuda)",
            ["device"],
            registry=registry,
        )
        self.gpu_info = Gauge(
            "reranker_gpu_info",
            "Each GPU NVML sees (gpu is NVML's index), its UUID and name, and the torch device "
            "this process serves on it (device, empty if none); always 1",
            ["gpu", "uuid", "name", "device"],
            registry=registry,
        )
        self.model_info = Gauge(
            "reranker_model_info",
            "The model being served, one series per worker; always 1",
            ["model", "revision", "device", "dtype"],
            registry=registry,
        )

        self.runner_info = Gauge(
            "reranker_runner_info",
            "The runner serving now on each worker: padded or packed, compiled, replaying CUDA "
            "graphs (changes when a background compile swaps in, or falls back); always 1",
            ["device", "runner", "compiled", "cuda_graphs"],
            registry=registry,
        )
        self.runner_compile_state = Enum(
            "reranker_runner_compile_state",
            "Where each worker's compiled runner stands: off, compiling (the eager runner "
            "serves), compiled (it serves), fallback (it failed; the eager runner serves on)",
            ["device"],
            states=list(COMPILE_STATES),
            registry=registry,
        )
        self.runner_compile_seconds = Gauge(
            "reranker_runner_compile_seconds",
            "Seconds each worker's compiled runner took from the start of compiling to serving "
            "(or to its failure); 0 until then",
            ["device"],
            registry=registry,
        )

        self._gpu_info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._runner_info_labels: dict[str, tuple[str, str, str, str]] = {}
        self._runner_info_lock = threading.Lock()
        for status in REQUEST_STATUSES:
            self.requests.labels(status=status)
        for priority in PRIORITY_CLASSES:
            self.queue_wait.labels(priority=priority)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result=result)
        for error_type in ERROR_TYPES:
            self.request_errors.labels(type=error_type)

    # -- facts from the engine ---------------------------------------------------------------

    def observe_batch(self, report: BatchReport) -> None:
        """Batch observer for the engine's worker threads."""
        self.batch_size.labels(device=report.device).observe(report.pairs)
        self.batch_tokens.labels(device=report.device).observe(report.padded_tokens)
        self.prefix_tokens_reused.inc(report.reused_tokens)
        self.inference.labels(device=report.device).observe(report.inference_seconds)
        priorities = report.queue_wait_priorities or (0,) * len(report.queue_wait_seconds)
        for wait, priority in zip(report.queue_wait_seconds, priorities, strict=True):
            self.queue_wait.labels(priority=priority_class(priority)).observe(wait)

    def set_runner(self, status: RunnerStatus) -> None:
        """A worker's runner and compile state now (from any thread)."""
        runner = status.runner
        labels = (
            status.device,
            runner.name,
            str(runner.compiled).lower(),
            str(runner.cuda_graphs).lower(),
        )
        with self._runner_info_lock:
            previous = self._runner_info_labels.get(status.device)
            if previous not in (None, labels):
                self.runner_info.remove(*previous)
            self._runner_info_labels[status.device] = labels
            self.runner_info.labels(*labels).set(1)
        self.runner_compile_state.labels(device=status.device).state(status.compile.state)
        seconds = status.compile.seconds
        self.runner_compile_seconds.labels(device=status.device).set(seconds or 0.0)

    def watch_queue(self, read_queued_pairs: Callable[[], int], max_queued_pairs: int) -> None:
        """Depth is read at scrape time, so the gauge is never stale."""
        self.queue_depth.set_function(read_queued_pairs)
        self.max_queued_pairs.set(max_queued_pairs)

    def set_workers(self, workers: Sequence[ModelDescription]) -> None:
        """What each worker serves: a ``reranker_model_info`` series per worker, and its
        per-pass families at zero before its first pass."""
        self.model_info.clear()
        for worker in workers:
            self.model_info.labels(
                model=worker.model,
                revision=worker.revision,
                device=worker.device,
                dtype=worker.dtype,
            ).set(1)
            for family in (self.inference, self.batch_size, self.batch_tokens):
                family.labels(device=worker.device)

    # -- facts from the HTTP layer ------------------------------------------------------------

    def record_success(
        self,
        *,
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
        self.requests.labels(status="success").inc()
        for count in windows:
            self.document_windows.observe(count)
        self.request_latency.observe(
            latency_seconds,
            exemplar={EXEMPLAR_TRACE_LABEL: trace_id} if trace_id is not None else None,
        )
        self.request_documents.observe(documents)
        self.request_tokens.observe(tokens)
        if top1_score is not None:
            self.top1_score.observe(top1_score)
        if score_stddev is not None:
            self.score_stddev.observe(score_stddev)

    def record_cache_lookup(self, hits: int, misses: int, seconds: float) -> None:
        """One request's lookup: its pairs found and not, and what it took."""
        self.cache_lookups.labels(result="hit").inc(hits)
        self.cache_lookups.labels(result="miss").inc(misses)
        self.cache_lookup_seconds.observe(seconds)

    def watch_cache_entries(self, read_entries: Callable[[], int]) -> None:
        self.cache_entries.set_function(read_entries)

    def add_cache_backends(self, backends: Sequence[str]) -> None:
        """The score cache's kinds of store: their ``backend`` series at zero from the start."""
        for backend in backends:
            for family in (self.cache_errors, self.cache_skipped, self.cache_breaker_open):
                family.labels(backend=backend)

    def record_error(self, error_type: str) -> None:
        """Count a non-2xx outcome; ``error_type`` must be one of ``ERROR_TYPES``."""
        self.request_errors.labels(type=error_type).inc()
        if error_type in SERVER_ERROR_TYPES:
            self.requests.labels(status="fail").inc()

    # -- facts from the NVML poller -----------------------------------------------------------

    def set_gpu(self, gpu: str, *, used_bytes: int, total_bytes: int) -> None:
        self.gpu_memory_used.labels(gpu=gpu).set(used_bytes)
        self.gpu_memory_total.labels(gpu=gpu).set(total_bytes)

    def set_gpu_info(self, gpu: str, *, uuid: str, name: str, device: str) -> None:
        labels = (gpu, uuid, name, device)
        if self._gpu_info_labels.get(gpu) not in (None, labels):
            self.gpu_info.remove(*self._gpu_info_labels[gpu])
        self._gpu_info_labels[gpu] = labels
        self.gpu_info.labels(*labels).set(1)

    def set_gpu_utilization(self, gpu: str, ratio: float) -> None:
        self.gpu_utilization.labels(gpu=gpu).set(ratio)

    def forget_gpu(self, gpu: str) -> None:
        """Drop a GPU's series, so that a dead NVML leaves gaps rather than stale values."""
        for family in (self.gpu_memory_used, self.gpu_memory_total, self.gpu_utilization):
            family.remove(gpu)
        info = self._gpu_info_labels.pop(gpu, None)
        if info is not None:
            self.gpu_info.remove(*info)

    def set_torch_memory(self, device: str, *, allocated_bytes: int, reserved_bytes: int) -> None:
        self.torch_memory_allocated.labels(device=device).set(allocated_bytes)
        self.torch_memory_reserved.labels(device=device).set(reserved_bytes)
