from __future__ import annotations

import pytest

from reranker_service.engine.calibration import fixed_cost_in_tokens, measure_pass_overhead
from reranker_service.engine.model import Qwen3ScoringModel
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine


def test_line_fit_recovers_fixed_cost() -> None:
    # 190 ms fixed + 4.5 ms per token: the Qwen3-Reranker-0.6B shape on this CPU.
    small = (64, 0.190 + 64 * 0.0045)
    large = (512, 0.190 + 512 * 0.0045)
    assert fixed_cost_in_tokens(small, large) == pytest.approx(0.190 / 0.0045)


def test_noise_gives_no_answer() -> None:
    assert fixed_cost_in_tokens((64, 0.5), (512, 0.4)) is None
    assert fixed_cost_in_tokens((64, 0.001), (512, 0.0001 + 0.0009)) is None


def test_faster_than_linear_small_pass_means_zero_fixed_cost() -> None:
    assert fixed_cost_in_tokens((64, 0.001), (512, 0.010)) == 0.0


def test_large_pass_must_be_larger() -> None:
    with pytest.raises(ValueError, match="more tokens"):
        fixed_cost_in_tokens((512, 1.0), (64, 0.1))


def test_measured_on_the_real_model(scoring_model: Qwen3ScoringModel) -> None:
    measured = measure_pass_overhead(scoring_model, scoring_model.encoder.prefix_ids, 8192)
    assert measured is None or measured >= 0


async def test_engine_start_sets_a_bounded_overhead(scoring_model: Qwen3ScoringModel) -> None:
    engine = RerankEngine(
        scoring_model, EngineConfig(None, 1000, largest_request_pairs=1000, tokenizer_threads=1)
    )
    await engine.start()
    try:
        assert 0 <= engine.pass_overhead_tokens <= engine.limits.max_batch_tokens
        outcome = await engine.rerank("instruction", "query", ["a", "b"])
        assert len(outcome.scores) == 2
    finally:
        await engine.stop()


async def test_a_pinned_pass_cost_is_used_as_given(scoring_model: Qwen3ScoringModel) -> None:
    config = EngineConfig(
        None, 1000, largest_request_pairs=1000, tokenizer_threads=1, pass_overhead_tokens=123
    )
    engine = RerankEngine(scoring_model, config)
    await engine.start()
    try:
        assert engine.pass_overhead_tokens == 123
        assert len((await engine.rerank("instruction", "query", ["a"])).scores) == 1
    finally:
        await engine.stop()
