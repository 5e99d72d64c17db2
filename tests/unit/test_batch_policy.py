from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reranker_service.engine.runner.protocol import PassShape, padded_pass_tokens
from reranker_service.engine.scheduler.batch_policy import TOLERANCE, select_window
from reranker_service.engine.scheduler.pass_cost import PassCostModel


def linear(fixed_tokens: float) -> PassCostModel:
    """A device whose pass costs ``fixed_tokens`` token-equivalents plus one unit per token."""
    return PassCostModel([(tokens, fixed_tokens + tokens) for tokens in (16, 65536)])


# Cost per token falls until 512 tokens, then stays: the shape measured on two CPU cores.
SATURATING = PassCostModel(
    [(16, 2.0), (64, 4.0), (128, 6.0), (256, 9.0), (512, 15.0), (1024, 30.0), (4096, 120.0)]
)


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[int], int, int, int]:
    lengths = sorted(draw(st.lists(st.integers(1, 4096), min_size=1, max_size=300)))
    anchor = draw(st.integers(0, len(lengths) - 1))
    budget = draw(st.integers(lengths[anchor], 65536))
    fixed = draw(st.integers(0, 4096))
    return lengths, anchor, budget, fixed


@given(queues())
@settings(max_examples=300, deadline=None)
def test_window_holds_anchor_and_respects_budget(case: tuple[list[int], int, int, int]) -> None:
    lengths, anchor, budget, fixed = case
    start, stop = select_window(lengths, anchor, budget, linear(fixed).seconds, padded_pass_tokens)
    assert start <= anchor < stop <= len(lengths)
    batch = lengths[start:stop]
    assert len(batch) * max(batch) <= budget


def test_anchor_longer_than_budget_runs_alone() -> None:
    assert select_window([10, 20, 9000], 2, 8192, linear(128).seconds, padded_pass_tokens) == (2, 3)


def test_equal_lengths_batch_until_the_device_saturates() -> None:
    # 100-token pairs: past 512 tokens the cost per token no longer falls, so the smallest
    # window with the best throughput (within the tolerance) is about five pairs, not 81.
    lengths = [100] * 500
    start, stop = select_window(lengths, 250, 8192, SATURATING.seconds, padded_pass_tokens)
    assert 4 <= stop - start <= 6


def test_equal_lengths_fill_the_budget_while_bigger_is_cheaper() -> None:
    lengths = [100] * 500
    start, stop = select_window(lengths, 250, 8192, linear(100_000).seconds, padded_pass_tokens)
    # 81 pairs fill the budget; the smallest window within the tolerance of that is taken.
    assert 81 * (1 - TOLERANCE) <= stop - start <= 81


def test_short_pairs_are_not_padded_to_a_long_anchor() -> None:
    lengths = [50] * 100 + [4000]
    assert select_window(lengths, 100, 16384, linear(128).seconds, padded_pass_tokens) == (100, 101)


def test_fixed_cost_makes_small_mixed_lengths_worth_batching() -> None:
    lengths = [60, 70, 80, 90, 100]
    assert select_window(lengths, 0, 8192, linear(2048).seconds, padded_pass_tokens) == (0, 5)
    assert select_window(lengths, 0, 8192, linear(0).seconds, padded_pass_tokens) == (0, 1)


def test_a_barely_better_bigger_window_is_not_taken() -> None:
    # One more pair would gain less than the tolerance: the anchor runs with its neighbour only.
    gain = 1 + TOLERANCE / 2
    costs = PassCostModel([(100, 1.0), (200, 1.0), (300, 3 / 2 / gain)])
    assert select_window([100, 100, 100], 0, 8192, costs.seconds, padded_pass_tokens) == (0, 2)


def test_anchor_outside_queue_is_rejected() -> None:
    with pytest.raises(IndexError):
        select_window([1, 2], 2, 100, linear(0).seconds, padded_pass_tokens)


def packed_pass_tokens(shape: PassShape) -> int:
    return shape.tokens + shape.prefix_tokens


@given(queues())
@settings(max_examples=300, deadline=None)
def test_a_packing_runners_window_respects_the_budget_in_its_units(
    case: tuple[list[int], int, int, int],
) -> None:
    lengths, anchor, budget, fixed = case
    start, stop = select_window(lengths, anchor, budget, linear(fixed).seconds, packed_pass_tokens)
    assert start <= anchor < stop <= len(lengths)
    assert sum(lengths[start:stop]) <= budget or stop - start == 1


def test_without_padding_a_short_pair_joins_a_long_one() -> None:
    """Padded, a 500-token pair beside a 1 000-token one costs 2 000 tokens, over the budget;
    packed it costs 1 500, and a pass's fixed cost makes it worth taking along."""
    costs = linear(2048).seconds
    assert select_window([500, 1000], 1, 1600, costs, padded_pass_tokens) == (1, 2)
    assert select_window([500, 1000], 1, 1600, costs, packed_pass_tokens) == (0, 2)


def test_a_window_counts_each_prefix_it_brings_once() -> None:
    """Where the runner computes prefixes in every pass, a pair whose request is already in
    the window adds its own tokens; one of another request adds its prefix too."""
    costs = linear(2048).seconds
    lengths = [50, 50, 50]
    shared = [(1, 100), (1, 100), (1, 100)]
    each_own = [(1, 100), (2, 100), (3, 100)]
    assert select_window(lengths, 0, 250, costs, packed_pass_tokens, shared) == (0, 3)
    assert select_window(lengths, 0, 250, costs, packed_pass_tokens, each_own) == (0, 1)
    assert select_window(lengths, 0, 250, costs, packed_pass_tokens) == (0, 3)
