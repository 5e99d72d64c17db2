"""Rerank request handling: limits, engine call, ordering, response; what happened goes into the
request's ``RerankRecord`` for the telemetry middleware."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any

import structlog
from starlette.types import Receive

from reranker_service.api.errors import ApiError
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
    PairTooLargeError,
    QueueFullError,
)
from reranker_service.engine.service import RerankEngine, RerankOutcome
from reranker_service.settings import Settings

logger = structlog.get_logger(__name__)


def _check_limits(body: RerankRequest, settings: Settings) -> None:
    count = len(body.documents)
    if count > settings.max_documents:
        raise ApiError(
            413,
            "payload_too_large",
            f"too many documents: {count} > {settings.max_documents}",
            field="documents",
            limit=settings.max_documents,
            value=count,
        )


async def _until_disconnected(receive: Receive) -> None:
    """Return once the client has gone. Called after the body was read, ``receive`` has
    nothing left to give but ``http.disconnect``."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _abandon(work: asyncio.Task[RerankOutcome]) -> None:
    """Cancel the engine call: its pairs still queued leave the queue (the batcher withdraws
    them), and pairs already in a forward pass are ignored when it ends."""
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)


async def _outcome_while_wanted(
    scoring: Coroutine[Any, Any, RerankOutcome], receive: Receive, deadline_seconds: float | None
) -> RerankOutcome:
    """The engine's outcome, unless the client disconnects or the deadline passes first."""
    work = asyncio.ensure_future(scoring)
    client_gone = asyncio.ensure_future(_until_disconnected(receive))
    try:
        done, _ = await asyncio.wait(
            {work, client_gone}, timeout=deadline_seconds, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        client_gone.cancel()
        if not work.done():
            await _abandon(work)
    if work in done:
        return work.result()
    if client_gone in done:
        # Nobody reads this answer; the status is for the telemetry (nginx's 499).
        raise ApiError(499, "client_disconnected", "the client closed the connection")
    raise ApiError(
        504,
        "timeout",
        f"not scored within {deadline_seconds:g} s; its queued pairs were dropped",
        limit=deadline_seconds,
        headers={"Retry-After": "1"},
    )


async def _score(
    engine: RerankEngine, body: RerankRequest, settings: Settings, receive: Receive
) -> RerankOutcome:
    instruction = body.instruction or settings.default_instruction
    timeout = settings.request_timeout_seconds or None
    try:
        return await _outcome_while_wanted(
            engine.rerank(instruction, body.query, body.document_texts()), receive, timeout
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
            headers={"Retry-After": "1"},
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
        raise ApiError(
            503, "draining", "the service is shutting down", headers={"Retry-After": "5"}
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


def _score_spread(scores: list[float]) -> float | None:
    """Population standard deviation; undefined (None) for fewer than two documents. Plain
    floats: ``statistics.pstdev`` works in exact fractions, ~0.1 ms a request."""
    if len(scores) < 2:
        return None
    mean = math.fsum(scores) / len(scores)
    return math.sqrt(math.fsum((score - mean) ** 2 for score in scores) / len(scores))


def _note_outcome(record: RerankRecord, outcome: RerankOutcome) -> None:
    record.tokens = outcome.total_tokens
    record.top1_score = max(outcome.scores) if outcome.scores else None
    record.score_std = _score_spread(outcome.scores)
    record.tokenize_seconds = outcome.tokenize_seconds
    record.queue_seconds = outcome.queue_seconds
    record.inference_seconds = outcome.inference_seconds
    record.engine_seconds = outcome.engine_seconds


async def rerank(
    body: RerankRequest,
    engine: RerankEngine,
    settings: Settings,
    *,
    receive: Receive,
    record: RerankRecord,
    request_id: str,
    api_version: str,
) -> RerankResponse:
    record.doc_count = len(body.documents)
    record.query = body.query
    record.top_n = body.top_n
    _check_limits(body, settings)
    logger.debug("rerank_started", doc_count=record.doc_count)
    outcome = await _score(engine, body, settings, receive)
    _note_outcome(record, outcome)
    return build_response(
        body,
        outcome,
        request_id=request_id,
        model_name=engine.description.model,
        api_version=api_version,
    )
