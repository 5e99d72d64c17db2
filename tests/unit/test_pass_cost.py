from __future__ import annotations

import time

import pytest

from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scheduler.pass_cost import (
    GRID_REPEATS,
    GRID_SMALLEST,
    OUTLIER_FACTOR,
    PassCostModel,
    grid_shape,
    measure_pass_costs,
)
from tests.support.serving import PassRecorder

# The Qwen3-Reranker-0.6B shape on two CPU cores (ms): cost per token falls from 18 to 6.
CPU_06B = [(16, 0.286), (32, 0.369), (64, 0.729), (128, 0.931), (256, 1.475)]


def test_between_measured_sizes_the_cost_is_interpolated() -> None:
    costs = PassCostModel(CPU_06B)
    assert costs.seconds(16) == pytest.approx(0.286)
    assert costs.seconds(96) == pytest.approx((0.729 + 0.931) / 2)


def test_past_the_largest_size_the_last_marginal_cost_continues() -> None:
    costs = PassCostModel(CPU_06B)
    marginal = (1.475 - 0.931) / 128
    assert costs.seconds(1024) == pytest.approx(1.475 + marginal * (1024 - 256))


def test_past_the_largest_size_at_most_a_halving_is_guessed() -> None:
    free_growth = PassCostModel([(16, 1.0), (32, 1.0)])
    assert free_growth.seconds(3200) == pytest.approx(1.0 + 0.5 * (1.0 / 32) * (3200 - 32))
    dearer = PassCostModel([(16, 0.1), (32, 1.0)])
    assert dearer.seconds(64) == pytest.approx(2.0)  # no more than the cost per token


def test_below_the_smallest_size_the_fixed_cost_stays() -> None:
    costs = PassCostModel(CPU_06B)
    # The line through 16 and 32 tokens meets zero tokens at 0.203 s.
    assert costs.seconds(8) == pytest.approx(0.286 - 8 * (0.369 - 0.286) / 16)
    assert costs.seconds(1) <= 0.286


def test_without_measurements_padding_is_the_only_cost() -> None:
    assert PassCostModel().seconds(300) == 300


def test_a_slow_small_bucket_is_capped_by_a_larger_one() -> None:
    costs = PassCostModel([(64, 0.5), (128, 0.2)])
    assert costs.seconds(64) == pytest.approx(0.2)


def test_passes_move_their_bucket_towards_what_they_took() -> None:
    costs = PassCostModel(CPU_06B)
    for _ in range(50):
        costs.observe(256, 1.0)
    assert costs.seconds(256) == pytest.approx(1.0, rel=1e-3)
    assert costs.seconds(64) == pytest.approx(0.729)


def test_one_slow_pass_moves_the_estimate_a_bounded_step() -> None:
    costs = PassCostModel(CPU_06B)
    costs.observe(256, 1000.0)
    assert costs.seconds(256) <= 1.475 * (1 + 0.2 * (OUTLIER_FACTOR - 1)) + 1e-9


def test_a_new_size_starts_its_own_bucket() -> None:
    costs = PassCostModel(CPU_06B)
    costs.observe(2048, 10.0)
    assert (2048, 10.0) in costs.points
    assert costs.seconds(1024) < costs.seconds(2048) == pytest.approx(10.0)


def test_saturation_is_where_the_cost_per_token_stops_falling() -> None:
    assert PassCostModel(CPU_06B).saturation_tokens() == 256
    assert PassCostModel([(16, 1.0), (1024, 64.0)]).saturation_tokens() == 16
    assert PassCostModel().saturation_tokens() == 0


def test_grid_passes_are_short_pairs() -> None:
    assert grid_shape(16) == (1, 16)
    assert grid_shape(64) == (1, 64)
    assert grid_shape(4096) == (64, 64)


def test_the_grid_runs_on_the_real_model_within_its_budget(
    scoring_model: ServedModel,
) -> None:
    recorder = PassRecorder(scoring_model)
    measured = measure_pass_costs(recorder, scoring_model.encoder.filler_ids, 1024, 30.0)
    sizes = [tokens for tokens, _ in measured.points]
    assert sizes == [16, 32, 64, 128, 256, 512, 1024]  # the tiny model is fast: every size
    assert len(recorder.passes) == 1 + GRID_REPEATS * len(sizes)
    assert all(seconds > 0 for _, seconds in measured.points)


def test_the_grid_stops_before_overrunning_its_budget(scoring_model: ServedModel) -> None:
    started = time.perf_counter()
    runner, prefix_ids = scoring_model.runner, scoring_model.encoder.filler_ids
    measured = measure_pass_costs(runner, prefix_ids, 1 << 20, 0.0)
    assert time.perf_counter() - started < 5
    assert [tokens for tokens, _ in measured.points] == [GRID_SMALLEST]


async def test_engine_start_measures_the_pass_cost(scoring_model: ServedModel) -> None:
    engine = RerankEngine(
        scoring_model, EngineConfig(None, 1000, largest_request_pairs=1000, tokenizer_threads=1)
    )
    await engine.start()
    try:
        assert len(engine.pass_costs.points) >= 2
        outcome = await engine.rerank("instruction", "query", ["a", "b"])
        assert len(outcome.scores) == 2
    finally:
        await engine.stop()


async def test_pinned_pass_costs_are_used_as_given(scoring_model: ServedModel) -> None:
    recorder = PassRecorder(scoring_model)
    pinned = ((16.0, 0.5), (4096.0, 1.0))
    config = EngineConfig(
        None, 1000, largest_request_pairs=1000, tokenizer_threads=1, pass_costs=pinned
    )
    engine = RerankEngine(recorder.served, config)
    await engine.start()
    try:
        assert len(recorder.passes) == 1  # the warm-up request, no grid
        # The warm-up's pass paid first-use setup: it is not kept in the curve.
        assert engine.pass_costs.points == list(pinned)
        assert len((await engine.rerank("instruction", "query", ["a"])).scores) == 1
    finally:
        await engine.stop()
