"""The whole service over the pure-Python fake runner: HTTP, the engine, the scheduler and the
runner boundary, with no torch in the forward pass. What the scheduler hands the runner is
checked by the fake itself (prefixes held or computed, released when done)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from reranker_service.app import create_app
from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.exposition import scrape
from tests.support.fake_runner import FakeRunner, fake_logit
from tests.support.serving import asgi_client, make_settings

DOCUMENTS = ["Paris is in France.", "", "a much longer document " * 12, "中文 🙂"]


@pytest.fixture
def encoder(checkpoint: Path) -> PromptEncoder:
    """The checkpoint's tokenizer through the tokenizers library alone."""
    backend = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
    backend.no_truncation()
    backend.no_padding()
    return PromptEncoder(backend, 512)


@pytest.mark.parametrize("workers", [1, 2])
async def test_the_fake_runner_serves_every_request_exactly(
    checkpoint: Path, encoder: PromptEncoder, workers: int
) -> None:
    runners = tuple(
        FakeRunner(f"cpu:{index}" if workers > 1 else "cpu") for index in range(workers)
    )
    settings = make_settings(checkpoint, max_batch_tokens=512, max_length=512)
    app = create_app(settings, model=ServedModel(encoder, runners))
    queries = [f"question {n} about " + "many words " * (n % 5) for n in range(12)]
    async with asgi_client(app) as http:
        responses = await asyncio.gather(
            *(http.post("/rerank", json={"query": q, "documents": DOCUMENTS}) for q in queries)
        )
        exposition = await scrape(http)
        # Every prefix a runner computed is released on it once its request is answered.
        computed = [
            {p for batch in runner.batches for p in batch.new_prefixes} for runner in runners
        ]
        released = [
            await asyncio.to_thread(runner.wait_released, ids)
            for runner, ids in zip(runners, computed, strict=True)
        ]
        queued = app.state.lifecycle.engine.queued_pairs
    assert [response.status_code for response in responses] == [200] * len(queries)
    for query, response in zip(queries, responses, strict=True):
        pairs = encoder.encode(DEFAULT_INSTRUCTION, query, DOCUMENTS)
        expected = {i: probability(fake_logit(pair)) for i, pair in enumerate(pairs)}
        served = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        assert served == pytest.approx(expected, abs=1e-12)
    assert queued == 0
    assert any(computed), "no request shared its prefix"
    assert released == [True] * workers
    assert [runner.prefixes for runner in runners] == [{} for _ in runners]
    assert exposition.value("reranker_prefix_tokens_reused_total") > 0
