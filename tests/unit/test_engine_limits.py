"""The engine's limits: the operator's where set, the engine's choice (the one place the defaults
live) where not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reranker_service.app import device_shares
from reranker_service.engine.rerank_engine import EngineConfig, choose_limits
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scoring import ModelDescription
from tests.support.fake_runner import FakeRunner


def _described(device: str, max_length: int = 8192) -> ModelDescription:
    return ModelDescription("m", "local", device, "float32", max_length, 0.0)


UNSET = EngineConfig(
    max_batch_tokens=None, max_queued_pairs=None, largest_request_pairs=1000, tokenizer_threads=1
)


def test_a_gpu_gets_a_larger_batch_budget_than_a_cpu() -> None:
    cpu = choose_limits(UNSET, _described("cpu", 512))
    gpu = choose_limits(UNSET, _described("cuda:1", 512))
    assert (cpu.max_batch_tokens, gpu.max_batch_tokens) == (8192, 32768)


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_the_budget_always_fits_one_full_length_pair(device: str) -> None:
    limits = choose_limits(UNSET, _described(device, 65536))
    assert limits.max_batch_tokens == 65536


@pytest.mark.parametrize(("largest_request", "queue"), [(5000, 20000), (10, 4096)])
def test_the_queue_holds_several_of_the_largest_requests(largest_request: int, queue: int) -> None:
    config = replace(UNSET, largest_request_pairs=largest_request)
    assert choose_limits(config, _described("cpu")).max_queued_pairs == queue


def test_the_operator_wins() -> None:
    config = replace(UNSET, max_batch_tokens=9000, max_queued_pairs=123)
    limits = choose_limits(config, _described("cuda:0"))
    assert (limits.max_batch_tokens, limits.max_queued_pairs, limits.max_length) == (
        9000,
        123,
        8192,
    )


def test_models_sharing_a_gpu_share_its_default_budget() -> None:
    """Two models on one GPU each get half its default pass budget, so that their passes
    together fit as one model's would; one set by the operator stands, and a full pair always
    fits."""
    shared = replace(UNSET, device_share=2)
    assert choose_limits(shared, _described("cuda:0", 512)).max_batch_tokens == 16384
    assert choose_limits(shared, _described("cuda:0", 20000)).max_batch_tokens == 20000
    operator = replace(shared, max_batch_tokens=30000)
    assert choose_limits(operator, _described("cuda:0", 512)).max_batch_tokens == 30000


def test_the_share_counts_the_models_on_each_gpu(scoring_model: ServedModel) -> None:
    """Per model, the most models on any of its GPUs; the CPU's budget is not divided."""
    models = {
        "a": ServedModel(scoring_model.encoder, (FakeRunner("cuda:0"), FakeRunner("cuda:1"))),
        "b": ServedModel(scoring_model.encoder, (FakeRunner("cuda:1"),)),
        "c": ServedModel(scoring_model.encoder, (FakeRunner("cuda:2"),)),
        "d": ServedModel(scoring_model.encoder, (FakeRunner("cpu"),)),
        "e": ServedModel(scoring_model.encoder, (FakeRunner("cpu"),)),
    }
    assert device_shares(models) == {"a": 2, "b": 2, "c": 1, "d": 1, "e": 1}
