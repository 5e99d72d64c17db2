"""Rerank request handling: limits, engine call, ordering, response; what happened goes into the
request's ``RerankRecord`` for the telemetry middleware."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Sequence

import structlog

from reranker_service.api.deps import RerankContext, RerankOptions
from reranker_service.api.errors import ApiError, engine_error
from reranker_service.api.protocol import (
    ApiVersion,
    BilledUnits,
    Meta,
    RerankRequest,
    RerankResponse,
    RerankResult,
    ResultDocument,
    ScoreData,
    ScoreRequest,
    ScoreResponse,
    ScoreUsage,
    TeiRank,
    TeiRerankRequest,
    Usage,
)
from reranker_service.api.record import RerankRecord
from reranker_service.engine.model_set import ServedEngine
from reranker_service.engine.pairs import Truncation
from reranker_service.engine.rerank_engine import RerankOutcome
from reranker_service.engine.scoring import probability

logger = structlog.get_logger(__name__)


def _check_limits(count: int, options: RerankOptions, field: str = "documents") -> None:
    if count > options.max_documents:
        raise ApiError(
            "payload_too_large",
            f"too many documents: {count} > {options.max_documents}",
            field=field,
            limit=options.max_documents,
            value=count,
        )


def _windows(requested: int | None, options: RerankOptions) -> int:
    """The windows a document may be scored over: the request's, within the server's cap."""
    windows = requested or options.max_chunks_per_doc
    if windows > options.max_chunks_limit:
        raise ApiError(
            "validation",
            f"max_chunks_per_doc: at most {options.max_chunks_limit} (RERANKER_MAX_CHUNKS_LIMIT)",
            field="max_chunks_per_doc",
            limit=options.max_chunks_limit,
            value=windows,
        )
    return windows


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
            "timeout",
            f"not scored within {timeout_seconds:g} s; its queued pairs were dropped",
            limit=timeout_seconds,
        ) from None


def _instruction(served: ServedEngine, requested: str | None, options: RerankOptions) -> str:
    """The request's instruction, else the model's default, else the service's; a model without
    a prompt takes none, and says so rather than ignore it."""
    if requested is None:
        return served.default_instruction or options.default_instruction
    if not served.engine.takes_instruction:
        raise ApiError(
            "validation",
            f"model {served.name!r} is a cross-encoder without a prompt: it reads no instruction",
            field="instruction",
        )
    return requested


async def _run_engine(
    context: RerankContext,
    served: ServedEngine,
    instruction: str | None,
    query: str | list[str],
    documents: list[str],
    *,
    truncation: Truncation,
    raw_scores: bool,
    priority: int | None,
) -> RerankOutcome:
    """The engine's outcome for the request, within its deadline; the engine's errors become
    API errors (``error_table.ENGINE_ERRORS``)."""
    options = context.options
    try:
        return await _outcome_within(
            served.engine.rerank(
                _instruction(served, instruction, options),
                query,
                documents,
                truncation=truncation,
                raw_scores=raw_scores,
                priority=context.priority(priority),
                cache_lookup=context.cache_lookup,
            ),
            options.timeout_seconds,
        )
    except ApiError:
        raise
    except Exception as exc:
        # Answered here, inside the middleware, so the 500 still carries its request id.
        raise engine_error(exc) from exc


def build_response(
    body: RerankRequest,
    outcome: RerankOutcome,
    *,
    request_id: str,
    model_name: str,
    api_version: str,
) -> RerankResponse:
    scores = outcome.scores
    ranking = _ranking(scores)
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


def _ranking(scores: Sequence[float]) -> list[int]:
    """Indexes by score, best first; a stable sort, so equal scores keep request order."""
    return sorted(range(len(scores)), key=lambda index: -scores[index])


def _score_stddev(scores: Sequence[float]) -> float | None:
    """Population standard deviation; undefined (None) for fewer than two documents. Plain
    floats: ``statistics.pstdev`` works in exact fractions, ~0.1 ms a request."""
    if len(scores) < 2:
        return None
    mean = math.fsum(scores) / len(scores)
    return math.sqrt(math.fsum((score - mean) ** 2 for score in scores) / len(scores))


def _note_outcome(record: RerankRecord, outcome: RerankOutcome, *, raw_scores: bool) -> None:
    """The outcome on the record, with the quality signals in P(yes) whatever the response
    carries: a histogram of probabilities takes no logits."""
    record.outcome = outcome
    probabilities = (
        [probability(score) for score in outcome.scores] if raw_scores else outcome.scores
    )
    record.top1_probability = max(probabilities) if probabilities else None
    record.probability_stddev = _score_stddev(probabilities)


def _start(
    context: RerankContext,
    model: str | None,
    query: str,
    documents: int,
    top_n: int | None = None,
) -> ServedEngine:
    """The request's model (see ``RerankContext.pick``), and what it asks on its record."""
    record = context.record
    record.doc_count = documents
    record.query = query
    record.top_n = top_n
    served = context.pick(model)
    logger.debug("rerank_started", doc_count=documents, model=served.name)
    return served


async def rerank(body: RerankRequest, context: RerankContext, api_version: str) -> RerankResponse:
    """Cohere v1 / v2 and Jina."""
    record = context.record
    served = _start(context, body.model, body.query, len(body.documents), body.top_n)
    _check_limits(len(body.documents), context.options)
    truncation = Truncation(
        max_document_tokens=body.max_tokens_per_doc,
        max_windows=_windows(body.max_chunks_per_doc, context.options),
    )
    outcome = await _run_engine(
        context,
        served,
        body.instruction,
        body.query,
        body.document_texts(),
        truncation=truncation,
        raw_scores=body.raw_scores,
        priority=body.priority,
    )
    _note_outcome(record, outcome, raw_scores=body.raw_scores)
    return build_response(
        body,
        outcome,
        request_id=context.request_id,
        model_name=served.name,
        api_version=api_version,
    )


async def tei_rerank(body: TeiRerankRequest, context: RerankContext) -> list[TeiRank]:
    """Text Embeddings Inference's shape: a bare list of ranks, best first."""
    record = context.record
    served = _start(context, None, body.query, len(body.texts))
    _check_limits(len(body.texts), context.options, field="texts")
    truncation = Truncation(
        max_windows=context.options.max_chunks_per_doc,
        keep="end" if body.truncation_direction.lower() == "left" else "start",
        refuse_over_length=body.truncate is False,
    )
    outcome = await _run_engine(
        context,
        served,
        None,
        body.query,
        body.texts,
        truncation=truncation,
        raw_scores=body.raw_scores,
        priority=body.priority,
    )
    _note_outcome(record, outcome, raw_scores=body.raw_scores)
    return [
        TeiRank(
            index=index,
            score=outcome.scores[index],
            text=body.texts[index] if body.return_text else None,
        )
        for index in _ranking(outcome.scores)
    ]


async def score_pairs(body: ScoreRequest, context: RerankContext) -> ScoreResponse:
    """vLLM's ``/score``: pairs scored as they come, in request order."""
    record = context.record
    queries = body.queries()
    served = _start(context, body.model, queries[0] if queries else "", len(body.text_2))
    if len(queries) not in (1, len(body.text_2)):
        raise ApiError(
            "validation",
            f"text_1 has {len(queries)} entries: give one, or one per entry of text_2 "
            f"({len(body.text_2)})",
            field="text_1",
            limit=len(body.text_2),
            value=len(queries),
        )
    _check_limits(len(body.text_2), context.options, field="text_2")
    outcome = await _run_engine(
        context,
        served,
        body.instruction,
        queries[0] if len(queries) == 1 else queries,
        body.text_2,
        truncation=Truncation(
            max_document_tokens=body.max_tokens_per_doc,
            max_windows=context.options.max_chunks_per_doc,
        ),
        raw_scores=body.raw_scores,
        priority=body.priority,
    )
    _note_outcome(record, outcome, raw_scores=body.raw_scores)
    tokens = outcome.total_tokens
    return ScoreResponse(
        id=f"score-{context.request_id}",
        created=int(time.time()),
        model=served.name,
        data=[ScoreData(index=index, score=score) for index, score in enumerate(outcome.scores)],
        usage=ScoreUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
