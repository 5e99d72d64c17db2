"""A rerank request's trace: one span around the route, named after it (``rerank``, ``score``),
and the stages the engine timed as its children, placed at the times they ran.

The stages run on other threads, for several requests at once (a forward pass carries pairs
of many); the engine times them for every request anyway, so their spans are written from those
timings once the request is answered rather than opened and closed across threads.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from contextlib import AbstractContextManager

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from reranker_service.api.record import RerankRecord
from reranker_service.engine.rerank_engine import RerankOutcome

# Attribute names: the service's own under ``reranker.``; ``error.type`` is the semantic
# conventions' name for the class of a failure.
ATTR_REQUEST_ID = "reranker.request_id"
ATTR_MODEL = "reranker.model"
ATTR_DOCUMENTS = "reranker.documents"
ATTR_PAIRS = "reranker.pairs"
ATTR_TOKENS = "reranker.tokens"
ATTR_CACHE_HITS = "cache.hits"
ATTR_CACHE_MISSES = "cache.misses"
ATTR_TOP_N = "reranker.top_n"
ATTR_QUERY = "reranker.query"
ATTR_PASSES = "reranker.passes"
ATTR_PAIRS_PER_PASS = "reranker.pairs_per_pass"
ATTR_REQUEST_PAIRS_PER_PASS = "reranker.request_pairs_per_pass"
ATTR_PREFIX_REUSED_TOKENS = "reranker.prefix_reused_tokens"
ATTR_DEVICES = "reranker.devices"
ATTR_PASS_SECONDS = "reranker.pass_seconds"
ATTR_ERROR_TYPE = "error.type"
PASS_EVENT = "forward_pass"


class _Clock:
    """``time.perf_counter()`` readings as the Unix-epoch nanoseconds spans are stamped with."""

    def __init__(self) -> None:
        self._offset_ns = time.time_ns() - time.perf_counter_ns()

    def epoch_ns(self, perf_seconds: float) -> int:
        return round(perf_seconds * 1e9) + self._offset_ns


class RequestSpans:
    def __init__(self, tracer: Tracer, *, span_names: Mapping[str, str], query_chars: int) -> None:
        """``span_names``: the span of each watched path. ``query_chars``: characters of the
        query put on the span, as in the logs (0: none)."""
        self._tracer = tracer
        self._span_names = span_names
        self._query_chars = query_chars

    def open(self, path: str) -> AbstractContextManager[trace.Span]:
        """The request's span, current while the route runs (so its log lines carry its ids).
        ``close`` ends it, with its status taken from the response, not from exceptions on the
        way."""
        return self._tracer.start_as_current_span(
            self._span_names[path],
            kind=SpanKind.INTERNAL,
            record_exception=False,
            set_status_on_exception=False,
            end_on_exit=False,
        )

    def close(
        self,
        span: trace.Span,
        record: RerankRecord,
        *,
        request_id: str | None,
        error: str | None,
        end_ns: int | None = None,
    ) -> None:
        """Write what the request did onto its span, with the engine's stages as children, and
        end it (at ``end_ns``, Unix-epoch nanoseconds, or now); ``error`` is the failure's
        type, None on success."""
        if not span.is_recording():
            return
        attributes: dict[str, str | int] = {}
        if request_id is not None:
            attributes[ATTR_REQUEST_ID] = request_id
        if record.model is not None:
            attributes[ATTR_MODEL] = record.model
        if record.doc_count is not None:
            attributes[ATTR_DOCUMENTS] = record.doc_count
        if record.top_n is not None:
            attributes[ATTR_TOP_N] = record.top_n
        if self._query_chars > 0 and record.query is not None:
            attributes[ATTR_QUERY] = record.query[: self._query_chars]
        outcome = record.outcome
        if outcome is not None:
            attributes[ATTR_PAIRS] = len(outcome.pair_tokens)
            attributes[ATTR_TOKENS] = outcome.total_tokens
            if outcome.cache_lookup_seconds is not None:
                attributes[ATTR_CACHE_HITS] = outcome.cache_hits
                attributes[ATTR_CACHE_MISSES] = outcome.cache_misses
        span.set_attributes(attributes)
        if error is not None:
            span.set_attribute(ATTR_ERROR_TYPE, error)
            span.set_status(Status(StatusCode.ERROR, error))
        if outcome is not None:
            self._stage_spans(span, outcome)
        span.end(end_time=end_ns)

    def _stage_spans(self, parent: trace.Span, outcome: RerankOutcome) -> None:
        clock = _Clock()
        context = trace.set_span_in_context(parent)

        def stage(name: str, start: float, seconds: float, attributes: dict[str, int]) -> None:
            span = self._tracer.start_span(
                name,
                context,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                start_time=clock.epoch_ns(start),
            )
            span.end(end_time=clock.epoch_ns(start + seconds))

        pairs = {ATTR_PAIRS: len(outcome.pair_tokens)}
        tokens = {ATTR_TOKENS: outcome.total_tokens}
        stage("tokenize", outcome.started_at, outcome.tokenize_seconds, pairs | tokens)
        stage("queue_wait", outcome.queued_at, outcome.queue_seconds, pairs)
        passes = outcome.passes
        if not passes:
            return
        inference = self._tracer.start_span(
            "inference",
            context,
            kind=SpanKind.INTERNAL,
            start_time=clock.epoch_ns(min(share.started_at for share in passes)),
            attributes={
                ATTR_PASSES: len(passes),
                ATTR_PAIRS_PER_PASS: [share.batch_pairs for share in passes],
                ATTR_REQUEST_PAIRS_PER_PASS: [share.pairs for share in passes],
                ATTR_PREFIX_REUSED_TOKENS: sum(share.reused_tokens for share in passes),
                ATTR_DEVICES: sorted({share.device for share in passes}),
                ATTR_PASS_SECONDS: outcome.inference_seconds,
            },
        )
        for share in passes:
            inference.add_event(
                PASS_EVENT,
                {
                    "device": share.device,
                    "pairs": share.pairs,
                    "batch_pairs": share.batch_pairs,
                    "reused_tokens": share.reused_tokens,
                    "seconds": share.seconds,
                },
                timestamp=clock.epoch_ns(share.started_at),
            )
        inference.end(
            end_time=clock.epoch_ns(max(share.started_at + share.seconds for share in passes))
        )
