"""One place turns each rerank request into its metrics, its one log line and its timing headers.

The request fills a ``RerankRecord`` as it goes (the serving code with what it computed, the
error handlers with what went wrong); this middleware, which sees every outcome including the
ones answered before routing, reads it once at the end. Logs and metrics therefore always agree.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reranker_service.api.error_table import error_row
from reranker_service.api.record import RerankRecord, attach_record
from reranker_service.api.request_spans import RequestSpans
from reranker_service.engine.rerank_engine import RerankOutcome
from reranker_service.observability.metrics import SERVER_ERROR_TYPES, UNROUTED, ServiceMetrics
from reranker_service.observability.tracing import sampled_trace_id

logger = structlog.get_logger("reranker_service.requests")


def _error_type(record: RerankRecord, status: int | None) -> str | None:
    """None for a success, else the failure's type as the error metric counts it."""
    if status is not None and 200 <= status < 300:
        return None
    return metric_error_type(record.error, status)


def metric_error_type(error: str | None, status: int | None) -> str:
    """The failure's ``type`` label: its error type's (``ERROR_TYPES``), or, for a response
    that never started without an error noted, the client's leaving."""
    if status is None and error is None:
        return "client_disconnected"
    return error_row(error, status).metric


@dataclass
class RequestLogPolicy:
    sample_rate: float = 1.0
    """Share of successful requests whose ``request_completed`` line is written."""
    query_chars: int = 0
    """Characters of query text put in request lines; 0 keeps the query out of the logs."""
    rng: random.Random = field(default_factory=random.Random)

    def keep_success_line(self) -> bool:
        return self.sample_rate >= 1.0 or self.rng.random() < self.sample_rate

    def query_field(self, record: RerankRecord) -> dict[str, str]:
        if self.query_chars <= 0 or record.query is None:
            return {}
        return {"query": record.query[: self.query_chars]}


EXPOSED_HEADERS = [
    "X-Request-ID",
    "X-Total-Time",
    "X-Tokenization-Time",
    "X-Queue-Time",
    "X-Inference-Time",
    "X-Compute-Tokens",
    "X-Reranker-Cache",
    "Server-Timing",
]
"""What a browser client may read across origins: the request id and the timing headers."""


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _timing_headers(outcome: RerankOutcome | None, total_seconds: float) -> dict[str, str]:
    """Where the time went, in milliseconds, for debugging from the client side; also as
    ``Server-Timing``, which browser dev tools display."""
    phases: tuple[tuple[str, str, float], ...] = ()
    if outcome is not None:
        phases = (
            ("x-tokenization-time", "tokenize", outcome.tokenize_seconds),
            ("x-queue-time", "queue", outcome.queue_seconds),
            ("x-inference-time", "inference", outcome.inference_seconds),
        )
    headers: dict[str, str] = {}
    server_timing: list[str] = []
    for header, name, seconds in (*phases, ("x-total-time", "total", total_seconds)):
        headers[header] = f"{seconds * 1000:.3f}"
        server_timing.append(f"{name};dur={headers[header]}")
    if outcome is not None:
        headers["x-compute-tokens"] = str(outcome.computed_tokens)
        headers["x-reranker-cache"] = outcome.cache_result
        server_timing.append(f"engine;dur={outcome.engine_seconds * 1000:.3f}")
    headers["server-timing"] = ", ".join(server_timing)
    return headers


class RerankTelemetryMiddleware:
    """Pure ASGI; wraps only the rerank routes (``paths``), whatever the outcome. With
    ``spans`` (tracing on), each request also gets its span, current while the route runs."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        log_policy: RequestLogPolicy,
        paths: frozenset[str],
        spans: RequestSpans | None = None,
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._log_policy = log_policy
        self._paths = paths
        self._spans = spans

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        if self._spans is None:
            await self._watch(scope, receive, send, trace.INVALID_SPAN)
            return
        with self._spans.open(scope["path"]) as span:
            await self._watch(scope, receive, send, span)

    async def _watch(self, scope: Scope, receive: Receive, send: Send, span: trace.Span) -> None:
        """Run the route; ``span`` (current while it runs) ends with the response, as the HTTP
        server span does, or when the route ends without one."""
        record = attach_record(scope)
        started = time.perf_counter()
        # When the last of the response left: the latency's end, before the span is written.
        answered: float | None = None
        status: int | None = None

        def end_span(end_ns: int | None = None) -> None:
            if self._spans is not None and span.is_recording():
                self._spans.close(
                    span,
                    record,
                    request_id=scope["state"].get("request_id"),
                    error=_error_type(record, status),
                    end_ns=end_ns,
                )

        async def send_with_timing(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                total = time.perf_counter() - started
                for name, value in _timing_headers(record.outcome, total).items():
                    headers[name] = value
            if message["type"] != "http.response.body" or message.get("more_body", False):
                await send(message)
                return
            # The span ends as the last of the body leaves, inside the HTTP server span;
            # writing it waits until the client has its answer.
            answered_ns = time.time_ns()
            await send(message)
            answered = time.perf_counter()
            end_span(answered_ns)

        self._metrics.inflight_requests.inc()
        try:
            await self.app(scope, receive, send_with_timing)
        except Exception:
            if record.error is None and status is None:
                record.error = "internal"
            raise
        finally:
            self._metrics.inflight_requests.dec()
            seconds = (answered if answered is not None else time.perf_counter()) - started
            end_span()
            self._finish(record, status, seconds, sampled_trace_id(span))

    def _finish(
        self, record: RerankRecord, status: int | None, seconds: float, trace_id: str | None
    ) -> None:
        error_type = _error_type(record, status)
        if status is not None and error_type is None:
            self._finish_success(record, status, seconds, trace_id)
            return
        assert error_type is not None
        self._metrics.record_error(error_type, record.model or UNROUTED)
        fields: dict[str, Any] = {
            "status": status,
            "model": record.model,
            "error_type": error_type,
            "error": record.error,
            "doc_count": record.doc_count,
            "query_chars": len(record.query) if record.query is not None else None,
            "latency_ms": _milliseconds(seconds),
            **self._log_policy.query_field(record),
        }
        if error_type in SERVER_ERROR_TYPES:
            logger.warning("request_failed", **fields)
        else:
            logger.info("request_failed", **fields)

    def _finish_success(
        self, record: RerankRecord, status: int, seconds: float, trace_id: str | None
    ) -> None:
        outcome = record.outcome
        model = record.model or UNROUTED
        if outcome is not None and outcome.cache_lookup_seconds is not None:
            self._metrics.record_cache_lookup(
                model, outcome.cache_hits, outcome.cache_misses, outcome.cache_lookup_seconds
            )
        self._metrics.record_success(
            model=model,
            latency_seconds=seconds,
            documents=record.doc_count or 0,
            tokens=outcome.total_tokens if outcome is not None else 0,
            top1_score=record.top1_probability,
            score_stddev=record.probability_stddev,
            windows=outcome.windows if outcome is not None else (),
            trace_id=trace_id,
        )
        if not self._log_policy.keep_success_line():
            return
        logger.info(
            "request_completed",
            status=status,
            model=record.model,
            doc_count=record.doc_count,
            tokens=outcome.total_tokens if outcome is not None else None,
            latency_ms=_milliseconds(seconds),
            tokenize_ms=_milliseconds(outcome.tokenize_seconds if outcome else None),
            queue_ms=_milliseconds(outcome.queue_seconds if outcome else None),
            inference_ms=_milliseconds(outcome.inference_seconds if outcome else None),
            top1_score=record.top1_probability,  # the log keys are public
            score_std=record.probability_stddev,
            top_n=record.top_n,
            **self._log_policy.query_field(record),
        )
