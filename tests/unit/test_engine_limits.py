"""The engine's limits: the operator's where set, the engine's choice (the one place the defaults
live) where not."""

from __future__ import annotations

from dataclasses import replace

import pytest

from reranker_service.engine.rerank_engine import EngineConfig, choose_limits
from reranker_service.engine.scoring import ModelDescription


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
