"""Which queued pairs go into the next forward pass.

The queue is kept sorted by the tokens each pair computes. A batch is a contiguous window of
that order which always contains the *anchor* (the oldest waiting pair, so nothing starves) and
costs at most ``max_batch_tokens`` padded tokens (pairs x longest). Among the windows grown
greedily around the anchor, it takes the one with the best predicted throughput, useful tokens
per second of the device's measured pass cost (see ``pass_cost``): a fixed cost per pass makes
small pairs worth batching, a cost per token that falls with the pass's size makes larger passes
worth it until the device saturates, and the padding term keeps a 50-token pair out of a pass
padded to 4 000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

TOLERANCE = 0.03
"""Of the windows within this share of the best throughput, the smallest is taken: a bigger pass
that is barely faster per token only makes its first requests wait longer."""


def select_window(
    sorted_lengths: Sequence[int],
    anchor: int,
    max_batch_tokens: int,
    pass_seconds: Callable[[int], float],
) -> tuple[int, int]:
    """Return ``(start, stop)`` of the batch in ``sorted_lengths`` (ascending), anchor inside.
    ``pass_seconds`` predicts a pass's time from the padded tokens it computes."""
    if not 0 <= anchor < len(sorted_lengths):
        raise IndexError(f"anchor {anchor} outside a queue of {len(sorted_lengths)}")
    lo = hi = anchor  # inclusive bounds
    width = sorted_lengths[anchor]
    real = width
    count = 1
    windows = [(real / pass_seconds(width), lo, hi)]
    while True:
        grow_left = lo > 0 and (count + 1) * width <= max_batch_tokens
        right_width = sorted_lengths[hi + 1] if hi + 1 < len(sorted_lengths) else 0
        grow_right = bool(right_width) and (count + 1) * right_width <= max_batch_tokens
        if not (grow_left or grow_right):
            break
        left_gain = (
            (real + sorted_lengths[lo - 1]) / pass_seconds((count + 1) * width)
            if grow_left
            else -1.0
        )
        right_gain = (
            (real + right_width) / pass_seconds((count + 1) * right_width) if grow_right else -1.0
        )
        if left_gain >= right_gain:
            lo -= 1
            real += sorted_lengths[lo]
        else:
            hi += 1
            width = right_width
            real += width
        count += 1
        windows.append((max(left_gain, right_gain), lo, hi))
    best = max(throughput for throughput, _, _ in windows)
    _, lo, hi = next(w for w in windows if w[0] >= (1 - TOLERANCE) * best)
    return lo, hi + 1
