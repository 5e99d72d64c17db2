"""Which queued pairs go into the next forward pass.

The queue is kept sorted by the tokens each pair computes. A batch is a contiguous window of
that order which always contains the *anchor* (the oldest waiting pair, so nothing starves) and
costs at most ``max_batch_tokens`` tokens in the runner's geometry (``pass_tokens``: pairs x
longest for a runner that pads, the sum for one that packs). Among the windows grown
greedily around the anchor, it takes the one with the best predicted throughput, useful tokens
per second of the device's measured pass cost (see ``pass_cost``): a fixed cost per pass makes
small pairs worth batching, a cost per token that falls with the pass's size makes larger passes
worth it until the device saturates, and for a padding runner the geometry keeps a 50-token
pair out of a pass padded to 4 000.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from reranker_service.engine.runner.protocol import PassShape

TOLERANCE = 0.03
"""Of the windows within this share of the best throughput, the smallest is taken: a bigger pass
that is barely faster per token only makes its first requests wait longer."""


def select_window(
    sorted_lengths: Sequence[int],
    anchor: int,
    max_batch_tokens: int,
    pass_seconds: Callable[[int], float],
    pass_tokens: Callable[[PassShape], int],
) -> tuple[int, int]:
    """Return ``(start, stop)`` of the batch in ``sorted_lengths`` (ascending), anchor inside.
    ``pass_tokens`` is the runner's cost of a pass, and ``pass_seconds`` predicts a pass's
    time from that cost."""
    if not 0 <= anchor < len(sorted_lengths):
        raise IndexError(f"anchor {anchor} outside a queue of {len(sorted_lengths)}")
    lo = hi = anchor  # inclusive bounds
    width = sorted_lengths[anchor]
    real = width
    count = 1
    windows = [(real / pass_seconds(pass_tokens(PassShape(1, width, real))), lo, hi)]

    def grown(added: int, longest: int) -> float | None:
        """Predicted throughput of the window with one more pair of ``added`` tokens; None
        where that pass would cost more than the budget."""
        tokens = real + added
        cost = pass_tokens(PassShape(count + 1, longest, tokens))
        return tokens / pass_seconds(cost) if cost <= max_batch_tokens else None

    while True:
        left = grown(sorted_lengths[lo - 1], width) if lo > 0 else None
        right_width = sorted_lengths[hi + 1] if hi + 1 < len(sorted_lengths) else 0
        right = grown(right_width, right_width) if right_width else None
        if left is None and right is None:
            break
        if right is None or (left is not None and left >= right):
            lo -= 1
            real += sorted_lengths[lo]
        else:
            hi += 1
            width = right_width
            real += width
        count += 1
        windows.append((max(gain for gain in (left, right) if gain is not None), lo, hi))
    best = max(throughput for throughput, _, _ in windows)
    _, lo, hi = next(w for w in windows if w[0] >= (1 - TOLERANCE) * best)
    return lo, hi + 1
