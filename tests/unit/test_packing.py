"""The packed stream's layout, positions and mask, exactly: pure data, and the two forms the
runner builds the mask in (dense for SDPA, a block mask for FlexAttention)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reranker_service.engine.runner.packed import block_mask, dense_mask
from reranker_service.engine.runner.packing import (
    NO_PREFIX,
    PackedStream,
    bucket_for,
    pack,
    stream_tokens,
    token_buckets,
)
from reranker_service.engine.runner.protocol import PassBatch, PassPair
from reranker_service.engine.runner.qwen3_decoder import dense_attention, flex_attention

PAD = 0
PREFIX_A = [11, 12, 13]
PREFIX_B = [21, 22]


def _batch() -> PassBatch:
    """Two requests with prefixes, interleaved, and a pair without one between them."""
    return PassBatch(
        [
            PassPair([*PREFIX_A, 31, 32], prefix_id=7, prefix_length=3),
            PassPair([41, 42, 43]),
            PassPair([*PREFIX_B, 51], prefix_id=9, prefix_length=2),
            PassPair([*PREFIX_A, 61], prefix_id=7, prefix_length=3),
        ]
    )


def _stream(length: int = 16) -> PackedStream:
    return pack(_batch(), length, PAD)


def test_each_prefix_is_in_the_stream_once_followed_by_its_pairs() -> None:
    stream = _stream()
    assert stream.token_ids == [
        *PREFIX_A, 31, 32, 61,  # request A: its prefix, then each pair's own tokens
        41, 42, 43,  # the pair without a prefix
        *PREFIX_B, 51,  # request B
        PAD, PAD, PAD, PAD,
    ]  # fmt: skip
    assert stream.real_tokens == 12 == stream_tokens(_batch())


def test_a_pairs_positions_continue_after_its_prefix() -> None:
    stream = _stream()
    assert stream.positions[:12] == [0, 1, 2, 3, 4, 3, 0, 1, 2, 0, 1, 2]
    assert stream.positions[12:] == [0, 0, 0, 0]


def test_scores_are_read_at_each_pairs_last_token_in_batch_order() -> None:
    stream = _stream()
    assert stream.last_tokens == [4, 8, 11, 5]
    batch = _batch()
    for pair, last in zip(batch.pairs, stream.last_tokens, strict=True):
        assert stream.token_ids[last] == pair.tokens[-1]
        assert stream.positions[last] == len(pair.tokens) - 1


def test_a_pair_sees_its_prefix_and_its_own_earlier_tokens_only() -> None:
    stream = _stream()
    seen_by = {q: [k for k in range(stream.length) if stream.sees(q, k)] for q in range(16)}
    assert seen_by[4] == [0, 1, 2, 3, 4]  # A's first pair: the prefix, then itself
    assert seen_by[5] == [0, 1, 2, 5]  # A's second pair: not the first pair's tokens
    assert seen_by[8] == [6, 7, 8]  # the pair without a prefix sees itself only
    assert seen_by[11] == [9, 10, 11]  # B: its prefix, then itself
    assert seen_by[2] == [0, 1, 2]  # a prefix is causal in itself
    assert [seen_by[q] for q in range(12, 16)] == [[12], [13], [14], [15]]  # padding: itself
    assert all(k < 12 for q in range(12) for k in seen_by[q])  # no real token sees padding
    assert stream.prefix_segments[0] == NO_PREFIX


def test_a_stream_longer_than_its_bucket_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        pack(_batch(), 10, PAD)


def test_buckets_double_then_step_by_half_and_hold_the_largest_pass() -> None:
    assert token_buckets(1000) == (128, 256, 512, 1024)
    assert token_buckets(8192) == (128, 256, 512, 1024, 2048, 3072, 4096, 6144, 8192)
    assert token_buckets(9000)[-1] == 12288
    assert bucket_for(129, token_buckets(8192)) == 256
    assert bucket_for(3000, token_buckets(8192)) == 3072
    assert bucket_for(8193, token_buckets(8192)) is None


def _tensors(stream: PackedStream) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(stream.segments), torch.tensor(stream.prefix_segments)


def test_the_dense_mask_is_the_layouts_mask() -> None:
    stream = _stream()
    mask = dense_mask(*_tensors(stream))[0, 0]
    expected = [[stream.sees(q, k) for k in range(16)] for q in range(16)]
    assert mask.tolist() == expected


@st.composite
def _batches(draw: st.DrawFn) -> PassBatch:
    """Up to 4 requests of up to 4 pairs, some with a prefix, lengths small enough that a
    stream spans several 128-token tiles only when it is long."""
    pairs = []
    for request in range(draw(st.integers(1, 4))):
        prefix = draw(st.integers(0, 40))
        for _ in range(draw(st.integers(1, 4))):
            own = draw(st.integers(1, 60))
            tokens = [request + 1] * prefix + list(range(100, 100 + own))
            pairs.append(PassPair(tokens, request if prefix else None, prefix))
    order = draw(st.permutations(range(len(pairs))))
    return PassBatch([pairs[index] for index in order])


@settings(max_examples=25, deadline=None)
@given(_batches())
def test_flex_attention_through_the_block_mask_equals_dense_attention(batch: PassBatch) -> None:
    """The block mask's tiles and its mask function, against the dense mask: FlexAttention
    (eager) and SDPA give the same output on random queries, keys and values."""
    length = -(-stream_tokens(batch) // 128) * 128
    stream = pack(batch, length, PAD)
    segments, prefix_segments = _tensors(stream)
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(1, 4, length, 16, generator=generator)
    keys, values = (torch.randn(1, 2, length, 16, generator=generator) for _ in range(2))
    dense = dense_attention(queries, keys, values, dense_mask(segments, prefix_segments), 0.25)
    blocks = block_mask(segments, prefix_segments)
    flex = flex_attention(queries, keys, values, blocks, 0.25)
    assert torch.allclose(flex, dense, atol=1e-5)


def test_every_key_a_query_sees_comes_before_it_in_the_stream() -> None:
    stream = _stream()
    for query, key in itertools.product(range(stream.length), repeat=2):
        if stream.sees(query, key):
            assert key <= query


def _computed_tiles(stream: PackedStream) -> int:
    """128 x 128 tiles of attention FlexAttention computes for the stream: those its block mask
    lists, partly or fully seen."""
    blocks = block_mask(*_tensors(stream))
    return int(blocks.kv_num_blocks.sum()) + int(blocks.full_kv_num_blocks.sum())


def test_padding_costs_a_tile_per_128_tokens_not_a_causal_block() -> None:
    """One 200-token pair in the 8 192-token bucket: 64 query tiles, each computing its own
    diagonal tile and, for the two holding the pair, the pair's tiles before it. With all the
    padding in one causal segment (before) it was 2 018 tiles: 31 times the attention."""
    stream = pack(PassBatch([PassPair(list(range(1, 201)))]), 8192, PAD)
    assert _computed_tiles(stream) == 65
    alone = pack(PassBatch([PassPair(list(range(1, 201)))]), 256, PAD)
    assert _computed_tiles(alone) == 3
