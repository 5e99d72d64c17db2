"""Which queued pairs go into the next forward pass.

The queue is kept sorted by the tokens each pair computes. A batch is a contiguous window of
that order which always contains the *anchor* (the queue's choice: the first waiting pair by
priority and arrival, or one past the aging bound, so nothing starves) and
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
    prefixes: Sequence[tuple[int, int] | None] | None = None,
) -> tuple[int, int]:
    """Return ``(start, stop)`` of the batch in ``sorted_lengths`` (ascending), anchor inside.
    ``pass_tokens`` is the runner's cost of a pass, and ``pass_seconds`` predicts a pass's
    time from that cost. ``prefixes``, where the runner computes every request's prefix in
    each of its passes, gives each pair's ``(prefix id, prefix tokens)`` (None: no prefix):
    a window costs each distinct prefix once."""
    if not 0 <= anchor < len(sorted_lengths):
        raise IndexError(f"anchor {anchor} outside a queue of {len(sorted_lengths)}")
    window_prefixes: set[int] = set()

    def prefix_added(index: int) -> int:
        """Prefix tokens the pair at ``index`` adds to the window: its prefix's, if the
        window has no other pair of it."""
        prefix = prefixes[index] if prefixes is not None else None
        return prefix[1] if prefix is not None and prefix[0] not in window_prefixes else 0

    def take(index: int) -> int:
        added = prefix_added(index)
        prefix = prefixes[index] if prefixes is not None else None
        if prefix is not None:
            window_prefixes.add(prefix[0])
        return added

    lo = hi = anchor  # inclusive bounds
    width = sorted_lengths[anchor]
    real = width
    prefix_tokens = take(anchor)
    count = 1
    first = pass_tokens(PassShape(1, width, real, prefix_tokens))
    windows = [(real / pass_seconds(first), lo, hi)]

    def grown(index: int, longest: int) -> float | None:
        """Predicted throughput of the window with the pair at ``index`` added; None where
        that pass would cost more than the budget."""
        tokens = real + sorted_lengths[index]
        shape = PassShape(count + 1, longest, tokens, prefix_tokens + prefix_added(index))
        cost = pass_tokens(shape)
        return tokens / pass_seconds(cost) if cost <= max_batch_tokens else None

    while True:
        left = grown(lo - 1, width) if lo > 0 else None
        right_width = sorted_lengths[hi + 1] if hi + 1 < len(sorted_lengths) else 0
        right = grown(hi + 1, right_width) if right_width else None
        if left is None and right is None:
            break
        if right is None or (left is not None and left >= right):
            lo -= 1
            real += sorted_lengths[lo]
            prefix_tokens += take(lo)
        else:
            hi += 1
            width = right_width
            real += width
            prefix_tokens += take(hi)
        count += 1
        windows.append((max(gain for gain in (left, right) if gain is not None), lo, hi))
    best = max(throughput for throughput, _, _ in windows)
    _, lo, hi = next(w for w in windows if w[0] >= (1 - TOLERANCE) * best)
    return lo, hi + 1
