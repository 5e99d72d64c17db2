"""Which queued pairs go into the next forward pass.

The queue is kept sorted by token length. A batch is a contiguous window of that order which
always contains the *anchor* (the oldest waiting pair, so nothing starves), costs at most
``max_batch_tokens`` padded tokens (pairs x longest), and is grown greedily for throughput:
useful tokens / (padded tokens + a fixed per-pass overhead). The overhead term is what makes
many small pairs worth batching on a GPU, while the padded-tokens term keeps a 50-token pair out
of a batch padded to 4 000.
"""

from __future__ import annotations

from collections.abc import Sequence


def _throughput(real_tokens: int, count: int, width: int, overhead_tokens: int) -> float:
    return real_tokens / (count * width + overhead_tokens)


def select_window(
    sorted_lengths: Sequence[int],
    anchor: int,
    max_batch_tokens: int,
    overhead_tokens: int,
) -> tuple[int, int]:
    """Return ``(start, stop)`` of the batch in ``sorted_lengths`` (ascending), anchor inside."""
    if not 0 <= anchor < len(sorted_lengths):
        raise IndexError(f"anchor {anchor} outside a queue of {len(sorted_lengths)}")
    lo = hi = anchor  # inclusive bounds
    width = sorted_lengths[anchor]
    real = width
    count = 1
    best = _throughput(real, count, width, overhead_tokens)
    while True:
        left_gain = right_gain = -1.0
        if lo > 0 and (count + 1) * width <= max_batch_tokens:
            left_gain = _throughput(
                real + sorted_lengths[lo - 1], count + 1, width, overhead_tokens
            )
        if hi + 1 < len(sorted_lengths):
            right_width = sorted_lengths[hi + 1]
            if (count + 1) * right_width <= max_batch_tokens:
                right_gain = _throughput(
                    real + right_width, count + 1, right_width, overhead_tokens
                )
        if max(left_gain, right_gain) < best:
            return lo, hi + 1
        if left_gain >= right_gain:
            lo -= 1
            real += sorted_lengths[lo]
        else:
            hi += 1
            width = sorted_lengths[hi]
            real += width
        count += 1
        best = max(left_gain, right_gain)
