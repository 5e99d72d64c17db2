"""A run: every query's candidates reranked by one configuration, through its rerank route."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reranker_service.offline.batch_lines import Answer, BatchLine
from reranker_service.offline.in_order import PairBudget, Window, answer_in_order
from reranker_service.offline.line_sender import LineSender, RetryPolicy
from reranker_service.offline.posting import Poster

RERANK_ROUTE = "/v1/rerank"

Run = dict[str, dict[str, float]]
"""Query id -> document id -> score: the shape the IR measures take."""


class RerankFailedError(Exception):
    """A query's request failed: the run would measure the failure, not the ranking."""


@dataclass(frozen=True)
class TimedRun:
    run: Run
    seconds: float
    pairs: int

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0


def _requests(
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    corpus: Mapping[str, str],
    options: Mapping[str, Any],
) -> Iterator[BatchLine]:
    for number, (query_id, query) in enumerate(queries.items(), start=1):
        documents = candidates.get(query_id, ())
        if not documents:
            continue
        body = {"query": query, "documents": [corpus[doc] for doc in documents], **options}
        yield BatchLine(number, query_id, RERANK_ROUTE, json.dumps(body).encode(), len(documents))


def _scores(answer: Answer, documents: Sequence[str]) -> dict[str, float]:
    if answer.error is not None:
        raise RerankFailedError(
            f"query {answer.line.custom_id!r}: {answer.error.get('type')}: "
            f"{answer.error.get('message')}"
        )
    return {
        documents[result["index"]]: float(result["relevance_score"])
        for result in answer.body["results"]
    }


async def rerank_candidates(
    poster: Poster,
    queries: Mapping[str, str],
    candidates: Mapping[str, Sequence[str]],
    corpus: Mapping[str, str],
    *,
    options: Mapping[str, Any],
    headers: Mapping[str, str],
    concurrency: int,
    pairs_in_flight: int,
) -> TimedRun:
    """Each query's candidates scored in one request, ``concurrency`` queries at once (the
    service batches across them, as across clients)."""
    window = Window(concurrency)
    sender = LineSender(poster, RetryPolicy(), headers=headers, window=window)
    run: Run = {}
    pairs = 0
    started = time.monotonic()
    answers = answer_in_order(
        _requests(queries, candidates, corpus, options),
        sender.send,
        window=window,
        budget=PairBudget(pairs_in_flight),
        stop=asyncio.Event(),
    )
    async with contextlib.aclosing(answers):  # a failed query cancels those in flight
        async for answer in answers:
            query_id = str(answer.line.custom_id)
            run[query_id] = _scores(answer, candidates[query_id])
            pairs += answer.line.pairs
    return TimedRun(run, time.monotonic() - started, pairs)
