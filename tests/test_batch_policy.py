from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reranker_service.engine.batch_policy import select_window


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[int], int, int, int]:
    lengths = sorted(draw(st.lists(st.integers(1, 4096), min_size=1, max_size=300)))
    anchor = draw(st.integers(0, len(lengths) - 1))
    budget = draw(st.integers(lengths[anchor], 65536))
    overhead = draw(st.integers(0, 4096))
    return lengths, anchor, budget, overhead


@given(queues())
@settings(max_examples=300, deadline=None)
def test_window_holds_anchor_and_respects_budget(case: tuple[list[int], int, int, int]) -> None:
    lengths, anchor, budget, overhead = case
    start, stop = select_window(lengths, anchor, budget, overhead)
    assert start <= anchor < stop <= len(lengths)
    batch = lengths[start:stop]
    assert len(batch) * max(batch) <= budget


def test_anchor_longer_than_budget_runs_alone() -> None:
    assert select_window([10, 20, 9000], 2, 8192, 128) == (2, 3)


def test_equal_lengths_fill_the_budget() -> None:
    lengths = [100] * 500
    start, stop = select_window(lengths, 250, 8192, 128)
    assert stop - start == 81


def test_short_pairs_are_not_padded_to_a_long_anchor() -> None:
    lengths = [50] * 100 + [4000]
    assert select_window(lengths, 100, 16384, 128) == (100, 101)


def test_overhead_makes_small_mixed_lengths_worth_batching() -> None:
    lengths = [60, 70, 80, 90, 100]
    assert select_window(lengths, 0, 8192, 2048) == (0, 5)


def test_anchor_outside_queue_is_rejected() -> None:
    with pytest.raises(IndexError):
        select_window([1, 2], 2, 100, 0)
