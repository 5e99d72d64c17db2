"""Rerank request handling: limits, engine call, ordering, response; what happened goes into the
request's ``RerankRecord`` for the telemetry middleware."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Sequence

import structlog

from reranker_service.api.deps import RerankContext, RerankOptions
from reranker_service.api.errors import (
    RETRY_AFTER_BUSY_SECONDS,
    ApiError,
    retry_after,
    unavailable,
)
from reranker_service.api.protocol import (
    ApiVersion,
    BilledUnits,
    Meta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ResultDocument,
    Usage,
)
from reranker_service.api.telemetry import RerankRecord
from reranker_service.engine.batcher import (
    EngineStoppedError,
    NonFiniteScoresError,
    PairTooLargeError,
    QueueFullError,
)
from reranker_service.engine.rerank_engine import RerankOutcome

logger = structlog.get_logger(__name__)


def _check_limits(body: RerankRequest, options: RerankOptions) -> None:
    count = len(body.documents)
    if count > options.max_documents:
        raise ApiError(
            413,
            "payload_too_large",
            f"too many documents: {count} > {options.max_documents}",
            field="documents",
            limit=options.max_documents,
            value=count,
        )


async def _outcome_within(
    scoring: Awaitable[RerankOutcome], timeout_seconds: float | None
) -> RerankOutcome:
    """The engine's outcome, or 504 once the deadline passes: the engine call is then cancelled,
    so its pairs still queued leave the queue (pairs already in a forward pass are ignored when
    it ends)."""
    deadline = asyncio.timeout(timeout_seconds)
    try:
        async with deadline:
            return await scoring
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ApiError(
            504,
            "timeout",
            f"not scored within {timeout_seconds:g} s; its queued pairs were dropped",
            limit=timeout_seconds,
            headers=retry_after(RETRY_AFTER_BUSY_SECONDS),
        ) from None


async def _score(body: RerankRequest, context: RerankContext) -> RerankOutcome:
    options = context.options
    instruction = body.instruction or options.default_instruction
    try:
        return await _outcome_within(
            context.engine.rerank(instruction, body.query, body.document_texts()),
            options.timeout_seconds,
        )
    except ApiError:
        raise
    except QueueFullError as exc:
        raise ApiError(
            429,
            "overloaded",
            f"server busy: {exc.queued} pairs queued, limit {exc.limit}; retry shortly",
            field="documents",
            limit=exc.limit,
            value=exc.queued + exc.requested,
            headers=retry_after(RETRY_AFTER_BUSY_SECONDS),
        ) from None
    except PairTooLargeError as exc:
        raise ApiError(
            503,
            "oom",
            f"{exc}, even alone; shorter documents or a lower RERANKER_MAX_LENGTH would fit",
            field="documents",
            value=exc.tokens,
        ) from None
    except EngineStoppedError:
        raise unavailable("draining") from None
    except NonFiniteScoresError as exc:
        # Logged by the engine with its pass (non_finite_scores); the client gets no number.
        raise ApiError(
            500, "internal", f"the model gave {exc.pairs} document(s) no finite score"
        ) from None
    except Exception as exc:
        # Answered here, inside the middleware, so the 500 still carries its request id.
        logger.exception("scoring_failed")
        raise ApiError(500, "internal", "internal error while scoring") from exc


def build_response(
    body: RerankRequest,
    outcome: RerankOutcome,
    *,
    request_id: str,
    model_name: str,
    api_version: str,
) -> RerankResponse:
    scores = outcome.scores
    # Stable sort: equal scores keep request order.
    ranking = sorted(range(len(scores)), key=lambda index: -scores[index])
    if body.top_n is not None:
        ranking = ranking[: body.top_n]
    texts = body.document_texts() if body.return_documents else None
    results = [
        RerankResult(
            index=index,
            relevance_score=scores[index],
            document=ResultDocument(text=texts[index]) if texts is not None else None,
        )
        for index in ranking
    ]
    tokens = outcome.total_tokens
    return RerankResponse(
        id=request_id,
        model=model_name,
        results=results,
        usage=Usage(total_tokens=tokens, prompt_tokens=tokens),
        meta=Meta(
            api_version=ApiVersion(version=api_version),
            billed_units=BilledUnits(search_units=1, input_tokens=tokens),
        ),
    )


def _score_stddev(scores: Sequence[float]) -> float | None:
    """Population standard deviation; undefined (None) for fewer than two documents. Plain
    floats: ``statistics.pstdev`` works in exact fractions, ~0.1 ms a request."""
    if len(scores) < 2:
        return None
    mean = math.fsum(scores) / len(scores)
    return math.sqrt(math.fsum((score - mean) ** 2 for score in scores) / len(scores))


def _note_outcome(record: RerankRecord, outcome: RerankOutcome) -> None:
    record.tokens = outcome.total_tokens
    record.top1_score = max(outcome.scores) if outcome.scores else None
    record.score_stddev = _score_stddev(outcome.scores)
    record.tokenize_seconds = outcome.tokenize_seconds
    record.queue_seconds = outcome.queue_seconds
    record.inference_seconds = outcome.inference_seconds
    record.engine_seconds = outcome.engine_seconds


async def rerank(body: RerankRequest, context: RerankContext, api_version: str) -> RerankResponse:
    record = context.record
    record.doc_count = len(body.documents)
    record.query = body.query
    record.top_n = body.top_n
    _check_limits(body, context.options)
    logger.debug("rerank_started", doc_count=record.doc_count)
    outcome = await _score(body, context)
    _note_outcome(record, outcome)
    return build_response(
        body,
        outcome,
        request_id=context.request_id,
        model_name=context.engine.description.model,
        api_version=api_version,
    )
