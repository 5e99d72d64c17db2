"""A score that is not a number never reaches a client: its request fails as ``internal``, the
other requests of the same pass are answered, and the pass is logged as ``non_finite_scores``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from structlog.testing import capture_logs

from reranker_service.app import load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import (
    ServedModel,
)
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.jobs import NonFiniteScoresError
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.exposition import scrape
from tests.support.faulty_runners import OVERFLOW_WORD, OverflowsOnAWord
from tests.support.serving import (
    AppFactory,
    asgi_client,
    logits,
    make_settings,
)


async def test_only_the_request_with_the_non_finite_pair_fails(
    scoring_model: ServedModel,
) -> None:
    scorer = OverflowsOnAWord(scoring_model)
    batcher = Batcher(
        [scorer],
        max_batch_tokens=4096,
        max_queued_pairs=100,
        pass_costs=PassCostModel([(64, 0.002), (128, 0.0025), (1024, 0.01)]),
    )
    encode = scoring_model.encoder.encode
    documents = ["fine", OVERFLOW_WORD, "also fine"]
    poisoned = batcher.submit(encode(DEFAULT_INSTRUCTION, "q", documents))
    clean = batcher.submit(encode(DEFAULT_INSTRUCTION, "q", ["fine", "also fine"]))
    with capture_logs() as logs:
        batcher.start()
        with pytest.raises(NonFiniteScoresError) as raised:
            await poisoned.future
        result = await clean.future
        await batcher.stop()
    assert scorer.batch_sizes == [5], "the two requests were meant to share one pass"
    assert (raised.value.pairs, raised.value.device) == (1, "cpu")
    assert all(math.isfinite(score) for score in result.scores)
    [event] = [entry for entry in logs if entry["event"] == "non_finite_scores"]
    assert (event["log_level"], event["pairs"], event["batch_pairs"]) == ("error", 1, 5)


async def test_a_non_finite_score_is_a_500_internal_and_counted(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    app = app_factory(model=OverflowsOnAWord(scoring_model))
    async with asgi_client(app) as http:
        failed = await http.post("/rerank", json={"query": "q", "documents": ["a", OVERFLOW_WORD]})
        answered = await http.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
        exposition = await scrape(http)
    assert failed.status_code == 500
    error = failed.json()["error"]
    assert error["type"] == "internal"
    assert "no finite score" in error["message"]
    assert answered.status_code == 200
    assert exposition.value("reranker_request_errors_total", type="internal") == 1


def test_the_model_reports_an_overflowed_logit_as_nan(checkpoint: Path) -> None:
    """An infinite logit's sigmoid is a plausible 1.0 or 0.0; the model must not pass it off as
    a score."""
    model = load_single_device_model(load_options(make_settings(checkpoint)))
    runner = model.runner
    assert isinstance(runner, PaddedRunner)
    runner._score_direction = torch.full_like(runner._score_direction, torch.inf)
    scores = logits(model, model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["a", "b"]))
    assert all(math.isnan(score) for score in scores)
