"""The packed layout of a pass, as plain lists: every pair of the pass in one token stream, each
request's shared prefix once, padded up to a token-count bucket.

A token belongs to one *segment*: a request's shared prefix, a pair's own tokens, or one padding
token at the end (each its own). A token sees the tokens before it in its own segment and, where
its segment is a pair with a prefix, every token of that prefix (which comes earlier in the
stream). Nothing sees the padding, and a padding token sees only itself, so that no row of
attention is empty and the padding adds one tile per 128 tokens to the attention, not a causal
block over all of it (a third of a large bucket can be padding). Positions
restart at 0 in each prefix and each pair without one, and continue after its prefix in a pair
with one: each pair computes exactly what it would alone.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from reranker_service.engine.runner.protocol import PassBatch

NO_PREFIX = -1
"""The ``prefix_segment`` of a token that sees no other segment than its own."""

BLOCK_TOKENS = 128
"""FlexAttention's tile: every bucket is whole tiles."""
HALF_STEPS_FROM = 2048


def token_buckets(largest_pass: int, smallest: int = BLOCK_TOKENS) -> tuple[int, ...]:
    """Pass sizes a packed stream is padded up to: doubling from ``smallest``, with a step
    halfway (x1.5) from ``HALF_STEPS_FROM`` tokens on, where a pass is large enough for its
    padding to cost real time; the last one holds ``largest_pass``."""
    sizes: list[int] = []
    power = smallest
    while not sizes or sizes[-1] < largest_pass:
        sizes.append(power)
        if power >= HALF_STEPS_FROM:
            sizes.append(power * 3 // 2)
        power *= 2
    first_holding = next(index for index, size in enumerate(sizes) if size >= largest_pass)
    return tuple(sizes[: first_holding + 1])


def bucket_for(tokens: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``tokens``; None past the largest."""
    index = bisect.bisect_left(buckets, tokens)
    return buckets[index] if index < len(buckets) else None


@dataclass(frozen=True)
class PackedStream:
    """One pass's stream: per token its id, position, segment and the prefix segment it also
    sees; per pair, in the batch's order, the index of its last token."""

    token_ids: list[int]
    positions: list[int]
    segments: list[int]
    prefix_segments: list[int]
    last_tokens: list[int]
    real_tokens: int
    """Tokens before the padding."""

    @property
    def length(self) -> int:
        return len(self.token_ids)

    def sees(self, query: int, key: int) -> bool:
        """Whether token ``query`` attends to token ``key``: the mask, one entry at a time (the
        runners build it in bulk; the tests hold the two to each other)."""
        if key > query:
            return False
        return self.segments[key] in (self.segments[query], self.prefix_segments[query])


def stream_tokens(batch: PassBatch) -> int:
    """Tokens of the batch's stream before padding: each pair's own tokens, and each distinct
    prefix once."""
    prefixes = {pair.prefix_id: pair.prefix_length for pair in batch.pairs}
    prefixes.pop(None, None)
    return sum(pair.own_tokens for pair in batch.pairs) + sum(prefixes.values())


def pack(batch: PassBatch, length: int, pad_token_id: int) -> PackedStream:
    """Lay ``batch`` out as a stream of ``length`` tokens (at least its tokens): each prefix
    followed by its pairs' own tokens, in the order the prefixes first appear, and pairs
    without a prefix where they come."""
    token_ids: list[int] = []
    positions: list[int] = []
    segments: list[int] = []
    prefix_segments: list[int] = []
    last_tokens = [0] * len(batch.pairs)
    groups: dict[int | None, list[int]] = {}
    for index, pair in enumerate(batch.pairs):
        groups.setdefault(pair.prefix_id, []).append(index)

    def append(tokens: Sequence[int], first_position: int, segment: int, sees: int) -> None:
        token_ids.extend(tokens)
        positions.extend(range(first_position, first_position + len(tokens)))
        segments.extend([segment] * len(tokens))
        prefix_segments.extend([sees] * len(tokens))

    segment = 0
    for prefix_id, members in groups.items():
        prefix_segment = NO_PREFIX
        if prefix_id is not None:
            first = batch.pairs[members[0]]
            prefix_segment = segment
            append(first.tokens[: first.prefix_length], 0, segment, NO_PREFIX)
            segment += 1
        for index in members:
            pair = batch.pairs[index]
            own = pair.tokens[pair.prefix_length :]
            if not own:
                raise ValueError("a pair has no tokens of its own after its prefix")
            append(own, pair.prefix_length, segment, prefix_segment)
            last_tokens[index] = len(token_ids) - 1
            segment += 1
    real = len(token_ids)
    if real > length:
        raise ValueError(f"a stream of {real} tokens does not fit in {length}")
    padding = length - real
    token_ids.extend([pad_token_id] * padding)
    positions.extend([0] * padding)
    segments.extend(range(segment, segment + padding))
    prefix_segments.extend([NO_PREFIX] * padding)
    return PackedStream(token_ids, positions, segments, prefix_segments, last_tokens, real)
