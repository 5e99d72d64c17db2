"""Which prefix a request shares: the longest common one, leaving each pair a token of its own,
and only where it saves enough."""

from __future__ import annotations

from reranker_service.engine.prefix import MIN_SAVED_SHARE, shared_prefix, shared_prefix_length


def test_the_longest_common_prefix_is_shared() -> None:
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_prefix_length([[1, 2], [3, 4]]) == 0


def test_every_pair_keeps_its_last_token() -> None:
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[7]]) == 0


def test_one_pair_shares_nothing() -> None:
    assert shared_prefix([[1, 2, 3, 4, 5]]) == 0
    assert shared_prefix([]) == 0


def test_a_prefix_is_shared_only_where_it_saves_enough() -> None:
    prefix = [1] * 10
    short = [[*prefix, 2, n] for n in range(4)]  # saves 30 of 48 tokens
    assert shared_prefix(short) == len(prefix) + 1
    # Two pairs of 200 tokens: one reused prefix of 11 saves 11 / 400, under the bar.
    long = [[*prefix, 2, *([n] * 188)] for n in (3, 4)]
    assert MIN_SAVED_SHARE * sum(map(len, long)) > 11
    assert shared_prefix(long) == 0
