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
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reranker_service.observability.metrics import SERVER_ERROR_TYPES, ServiceMetrics

logger = structlog.get_logger("reranker_service.requests")

_RECORD_KEY = "rerank_record"

# What each error body type counts as in ``reranker_request_errors_total{type}``.
_METRIC_ERROR_TYPE = {
    "validation": "validation",
    "unsupported_media_type": "validation",
    "invalid_json": "validation",
    "method_not_allowed": "validation",
    "not_found": "validation",
    "payload_too_large": "payload_too_large",
    "unauthorized": "unauthorized",
    "overloaded": "overloaded",
    "timeout": "timeout",
    "oom": "oom",
    "internal": "internal",
    "not_ready": "unavailable",
    "draining": "unavailable",
    "client_disconnected": "client_disconnected",
}


@dataclass
class RerankRecord:
    """What one rerank request did, filled in while it runs."""

    error: str | None = None
    """The error body's ``type``, once an error response is built."""
    doc_count: int | None = None
    query: str | None = None
    top_n: int | None = None
    tokens: int | None = None
    top1_score: float | None = None
    score_stddev: float | None = None
    windows: list[int] | None = None
    """Pairs each document was scored as (1, or its windows)."""
    tokenize_seconds: float | None = None
    queue_seconds: float | None = None
    inference_seconds: float | None = None
    engine_seconds: float | None = None


def record_of(scope: Scope) -> RerankRecord | None:
    """The request's record, if its route is one the telemetry middleware watches."""
    record = scope.get("state", {}).get(_RECORD_KEY)
    return record if isinstance(record, RerankRecord) else None


def note_error(scope: Scope, error_type: str) -> None:
    record = record_of(scope)
    if record is not None:
        record.error = error_type


def metric_error_type(error: str | None, status: int | None) -> str:
    if status is None and error is None:
        return "client_disconnected"
    if error in _METRIC_ERROR_TYPE:
        return _METRIC_ERROR_TYPE[error]
    return "internal" if status is None or status >= 500 else "validation"


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
    "Server-Timing",
]
"""What a browser client may read across origins: the request id and the timing headers."""


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _timing_headers(record: RerankRecord, total_seconds: float) -> dict[str, str]:
    """Where the time went, in milliseconds, for debugging from the client side; also as
    ``Server-Timing``, which browser dev tools display."""
    phases = (
        ("x-tokenization-time", "tokenize", record.tokenize_seconds),
        ("x-queue-time", "queue", record.queue_seconds),
        ("x-inference-time", "inference", record.inference_seconds),
        ("x-total-time", "total", total_seconds),
    )
    headers: dict[str, str] = {}
    server_timing: list[str] = []
    for header, name, seconds in phases:
        if seconds is not None:
            headers[header] = f"{seconds * 1000:.3f}"
            server_timing.append(f"{name};dur={headers[header]}")
    if record.tokens is not None:
        headers["x-compute-tokens"] = str(record.tokens)
    if record.engine_seconds is not None:
        server_timing.append(f"engine;dur={record.engine_seconds * 1000:.3f}")
    headers["server-timing"] = ", ".join(server_timing)
    return headers


class RerankTelemetryMiddleware:
    """Pure ASGI; wraps only the rerank routes (``paths``), whatever the outcome."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: ServiceMetrics,
        log_policy: RequestLogPolicy,
        paths: frozenset[str],
    ) -> None:
        self.app = app
        self._metrics = metrics
        self._log_policy = log_policy
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self._paths:
            await self.app(scope, receive, send)
            return
        record = RerankRecord()
        scope.setdefault("state", {})[_RECORD_KEY] = record
        started = time.perf_counter()
        status: int | None = None

        async def send_with_timing(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                for name, value in _timing_headers(record, time.perf_counter() - started).items():
                    headers[name] = value
            await send(message)

        self._metrics.inflight_requests.inc()
        try:
            await self.app(scope, receive, send_with_timing)
        except Exception:
            if record.error is None and status is None:
                record.error = "internal"
            raise
        finally:
            self._metrics.inflight_requests.dec()
            self._finish(record, status, time.perf_counter() - started)

    def _finish(self, record: RerankRecord, status: int | None, seconds: float) -> None:
        if status is not None and 200 <= status < 300:
            self._finish_success(record, status, seconds)
            return
        error_type = metric_error_type(record.error, status)
        self._metrics.record_error(error_type)
        fields: dict[str, Any] = {
            "status": status,
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

    def _finish_success(self, record: RerankRecord, status: int, seconds: float) -> None:
        self._metrics.record_success(
            latency_seconds=seconds,
            documents=record.doc_count or 0,
            tokens=record.tokens or 0,
            top1_score=record.top1_score,
            score_stddev=record.score_stddev,
            windows=record.windows or (),
        )
        if not self._log_policy.keep_success_line():
            return
        logger.info(
            "request_completed",
            status=status,
            doc_count=record.doc_count,
            tokens=record.tokens,
            latency_ms=_milliseconds(seconds),
            tokenize_ms=_milliseconds(record.tokenize_seconds),
            queue_ms=_milliseconds(record.queue_seconds),
            inference_ms=_milliseconds(record.inference_seconds),
            top1_score=record.top1_score,
            score_std=record.score_stddev,  # the log key is public
            top_n=record.top_n,
            **self._log_policy.query_field(record),
        )
