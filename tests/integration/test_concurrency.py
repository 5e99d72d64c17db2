"""Concurrent clients over real HTTP get the scores of their own pairs, whoever they shared
forward passes with."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scheduler.jobs import BatchReport
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.local_server import serve_in_thread
from tests.support.serving import PassRecorder, logits, make_settings

CLIENTS = 16
REQUESTS_PER_CLIENT = 4


def _workload(seed: int) -> tuple[str, list[str]]:
    rng = random.Random(seed)
    words = ["capital", "river", "Paris", "gravity", "中文", "token", "batch", "🙂", "the"]
    query = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
    docs = [
        " ".join(rng.choice(words) for _ in range(rng.randint(0, 300)))
        for _ in range(rng.randint(1, 12))
    ]
    return query, docs


async def test_concurrent_requests_get_their_own_scores(
    checkpoint: Path, scoring_model: ServedModel
) -> None:
    reports: list[BatchReport] = []
    recorder = PassRecorder(scoring_model)
    app = create_app(
        make_settings(checkpoint), model=recorder.served, batch_observer=reports.append
    )
    workloads = [_workload(seed) for seed in range(CLIENTS * REQUESTS_PER_CLIENT)]

    async def client_loop(http: httpx.AsyncClient, client: int) -> list[tuple[int, Any]]:
        answers = []
        for r in range(REQUESTS_PER_CLIENT):
            seed = client * REQUESTS_PER_CLIENT + r
            query, docs = workloads[seed]
            response = await http.post("/rerank", json={"query": query, "documents": docs})
            assert response.status_code == 200, response.text
            answers.append((seed, response.json()))
        return answers

    with serve_in_thread(app) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            per_client = await asyncio.gather(*(client_loop(http, c) for c in range(CLIENTS)))

    for seed, body in (answer for answers in per_client for answer in answers):
        query, docs = workloads[seed]
        token_ids = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, query, docs)
        alone = [probability(logits(scoring_model, [ids])[0]) for ids in token_ids]
        assert len(body["results"]) == len(docs)
        for result in body["results"]:
            assert abs(result["relevance_score"] - alone[result["index"]]) <= 1e-5
    served_pairs = sum(len(docs) for _, docs in workloads)
    assert sum(report.pairs for report in reports) >= served_pairs
    # Which requests (seeds) each pair's tokens could belong to: a pass spans two requests when
    # no one request owns all of its pairs.
    owners: dict[tuple[int, ...], set[int]] = {}
    for seed, (query, docs) in enumerate(workloads):
        for ids in scoring_model.encoder.encode(DEFAULT_INSTRUCTION, query, docs):
            owners.setdefault(tuple(ids), set()).add(seed)
    client_passes = [batch for batch in recorder.passes if all(seq in owners for seq in batch)]
    spanning = [
        batch for batch in client_passes if not set.intersection(*(owners[s] for s in batch))
    ]
    assert spanning, "no batch spanned two requests"
