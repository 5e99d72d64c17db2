"""Measure what a forward pass costs on this model and device, for the batch policy.

A pass takes about ``fixed + per_token x tokens``. The ratio ``fixed / per_token`` (the pass's
fixed cost in token-equivalents) decides how hard batching should try: ~40 tokens for the
0.6B model on a CPU (reading the weights dominates), thousands on a GPU (kernel launches
dominate). Measured at start-up rather than guessed, because it changes 20x across models.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from reranker_service.engine.scoring import PairScorer

SMALL_PASS = (1, 64)
"""pairs, tokens per pair"""
LARGE_PASS_LENGTH = 128
CONTRAST = 3.0
"""The large pass grows until it takes this many times the small one, so that the fit is
not timing noise: a real model gets there at once, a tiny model or a GPU needs a big pass."""


def fixed_cost_in_tokens(small: tuple[int, float], large: tuple[int, float]) -> float | None:
    """Fit a line through (tokens, seconds) of two passes; ``None`` if the timings are noise."""
    (small_tokens, small_seconds), (large_tokens, large_seconds) = small, large
    if large_tokens <= small_tokens:
        raise ValueError("the large pass must compute more tokens than the small one")
    per_token = (large_seconds - small_seconds) / (large_tokens - small_tokens)
    if per_token <= 0:
        return None
    fixed = small_seconds - per_token * small_tokens
    return max(fixed, 0.0) / per_token


def _fastest_pass(scorer: PairScorer, batch: Sequence[Sequence[int]], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        scorer.score(batch)
        best = min(best, time.perf_counter() - started)
    return best


def measure_pass_overhead(
    scorer: PairScorer, token_ids: Sequence[int], max_batch_tokens: int
) -> float | None:
    """Time a small and a large pass (fastest of a few) built from ``token_ids``; blocking."""

    def batch(pairs: int, length: int) -> list[list[int]]:
        repeated = list(token_ids) * (length // max(len(token_ids), 1) + 1)
        return [repeated[:length]] * pairs

    small = batch(*SMALL_PASS)
    _fastest_pass(scorer, small, 1)  # first-call setup must not count as fixed cost
    small_seconds = _fastest_pass(scorer, small, 3)
    large_pairs = max(1, min(4, max_batch_tokens // LARGE_PASS_LENGTH))
    while True:
        large_seconds = _fastest_pass(scorer, batch(large_pairs, LARGE_PASS_LENGTH), 2)
        if (
            large_seconds >= CONTRAST * small_seconds
            or 2 * large_pairs * LARGE_PASS_LENGTH > max_batch_tokens
        ):
            break
        large_pairs *= 2
    return fixed_cost_in_tokens(
        (SMALL_PASS[0] * SMALL_PASS[1], small_seconds),
        (large_pairs * LARGE_PASS_LENGTH, large_seconds),
    )
