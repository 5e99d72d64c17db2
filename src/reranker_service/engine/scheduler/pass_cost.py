"""What a forward pass costs on the serving device, as a function of the tokens it computes.

A pass's time is not a straight line in its tokens: a fixed part (reading the weights, kernel
launches) dominates small passes, and the cost per token keeps falling as matrix multiplies get
larger, until the device is saturated. Where that curve flattens is the batch size worth waiting
for. The curve is measured on a small ladder of pass sizes at start-up, within a time budget,
then kept current from the passes the worker times anyway, so that it follows the real traffic
(its lengths, its attention cost, a warmer or busier device).
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from reranker_service.engine.runner.protocol import ModelRunner, PassShape, run_pass

_BUCKETS_PER_OCTAVE = 2
ONLINE_WEIGHT = 0.2
"""Weight of one timed pass in its size bucket's estimate."""
EXTRAPOLATED_SHARE = 0.5
"""Past the largest measured pass, the cost per added token is assumed at least this share of
that pass's cost per token: at most a halving is guessed that was not measured."""
OUTLIER_FACTOR = 3.0
"""A pass slower than this many times the estimate (a collection pause, a noisy neighbour) moves
the estimate as if it had taken this many times."""


@dataclass(frozen=True)
class CostPoint:
    tokens: float
    seconds: float

    @property
    def per_token(self) -> float:
        return self.seconds / self.tokens


def _bucket(tokens: float) -> int:
    return round(math.log2(tokens) * _BUCKETS_PER_OCTAVE)


class PassCostModel:
    """Predicted seconds of a pass by the tokens it costs its runner (``pass_tokens``: padding
    included where the runner pads). One estimate per half-octave of pass size; prediction
    interpolates between them. The batcher's worker thread is the one that updates it and
    predicts with it."""

    def __init__(self, points: Iterable[tuple[float, float]] = ()) -> None:
        self._points: dict[int, CostPoint] = {}
        self._curve: list[CostPoint] = []
        self._curve_tokens: list[float] = []
        for tokens, seconds in points:
            self._points[_bucket(tokens)] = CostPoint(tokens, seconds)
        self._refresh()

    @property
    def points(self) -> list[tuple[float, float]]:
        """The estimates as ``(tokens, seconds)``, smallest pass first: what to pin another
        engine to, so that two engines start from the same curve."""
        return [(p.tokens, p.seconds) for p in sorted(self._points.values(), key=_tokens)]

    def observe(self, tokens: int, seconds: float) -> None:
        """Fold a timed pass into its bucket's estimate."""
        if tokens <= 0 or seconds <= 0:
            return
        key = _bucket(tokens)
        known = self._points.get(key)
        if known is None:
            self._points[key] = CostPoint(tokens, seconds)
        else:
            expected = known.per_token * tokens
            seconds = min(seconds, OUTLIER_FACTOR * expected)
            self._points[key] = CostPoint(
                known.tokens + ONLINE_WEIGHT * (tokens - known.tokens),
                known.seconds + ONLINE_WEIGHT * (seconds - known.seconds),
            )
        self._refresh()

    def _refresh(self) -> None:
        """Rebuild the curve: by size, and never dearer for fewer tokens (a small bucket that
        caught a slow moment must not keep the policy away from it for good)."""
        curve = sorted(self._points.values(), key=_tokens)
        cheapest_above = math.inf
        for index in reversed(range(len(curve))):
            cheapest_above = min(cheapest_above, curve[index].seconds)
            curve[index] = CostPoint(curve[index].tokens, cheapest_above)
        self._curve = curve
        self._curve_tokens = [point.tokens for point in curve]

    def seconds(self, tokens: int) -> float:
        """Predicted seconds of a pass computing ``tokens``. Between measured sizes, linear.
        Below the smallest, the line through the two smallest, kept between no fixed cost and
        all of it. Above the largest, the last segment's cost per added token, between half the
        largest pass's cost per token and all of it: if the curve still falls there, the
        policy tries larger passes, and their timings correct the guess. Without any
        measurement, the tokens themselves (the runner's geometry is the only cost)."""
        curve = self._curve
        if not curve:
            return float(tokens)
        first, last = curve[0], curve[-1]
        if tokens >= last.tokens:
            if len(curve) == 1:
                return last.per_token * tokens
            before = curve[-2]
            slope = (last.seconds - before.seconds) / (last.tokens - before.tokens)
            slope = min(max(slope, EXTRAPOLATED_SHARE * last.per_token), last.per_token)
            return last.seconds + slope * (tokens - last.tokens)
        if tokens <= first.tokens:
            if len(curve) == 1:
                return first.per_token * tokens
            line = _interpolate(first, curve[1], tokens)
            return min(max(line, first.per_token * tokens), first.seconds)
        index = bisect.bisect_left(self._curve_tokens, tokens)
        return _interpolate(curve[index - 1], curve[index], tokens)

    def saturation_tokens(self, within: float = 0.1) -> int:
        """The smallest measured pass size whose cost per token is within ``within`` of the
        best: where batching more stops paying. 0 without measurements."""
        if not self._curve:
            return 0
        best = min(point.per_token for point in self._curve)
        return round(next(p.tokens for p in self._curve if p.per_token <= (1 + within) * best))


def _tokens(point: CostPoint) -> float:
    return point.tokens


def _interpolate(low: CostPoint, high: CostPoint, tokens: float) -> float:
    if high.tokens == low.tokens:
        return low.seconds
    share = (tokens - low.tokens) / (high.tokens - low.tokens)
    return low.seconds + share * (high.seconds - low.seconds)


GRID_WIDTH = 64
"""Tokens per pair of the start-up passes: a short document's pair."""
GRID_SMALLEST = 16
GRID_REPEATS = 2
"""Passes per size, the fastest counting; one for passes slower than ``SLOW_PASS_SECONDS``,
whose timing noise is small against their length."""
SLOW_PASS_SECONDS = 0.25


def grid_shape(tokens: int) -> tuple[int, int]:
    """``(pairs, tokens per pair)`` of the start-up pass computing ``tokens``."""
    width = min(tokens, GRID_WIDTH)
    return max(1, tokens // width), width


def _predicted_seconds(points: Sequence[tuple[float, float]], tokens: float) -> float:
    """The next size's time, on the line through the last two (at least the last one's)."""
    last_tokens, last_seconds = points[-1]
    if len(points) == 1:
        return last_seconds * tokens / last_tokens
    previous_tokens, previous_seconds = points[-2]
    slope = (last_seconds - previous_seconds) / (last_tokens - previous_tokens)
    return max(last_seconds, last_seconds + slope * (tokens - last_tokens))


def measure_pass_costs(
    runner: ModelRunner, token_ids: Sequence[int], max_batch_tokens: int, budget_seconds: float
) -> PassCostModel:
    """Time passes of 16, 32, 64... tokens up to ``max_batch_tokens`` (each size the runner
    costs differently, once), stopping before a size whose predicted time would overrun
    ``budget_seconds``; blocking. The first pass, untimed, is the model's warm-up."""
    started = time.perf_counter()

    def timed(tokens: int, repeats: int) -> float:
        pairs, width = grid_shape(tokens)
        repeated = list(token_ids) * (width // max(len(token_ids), 1) + 1)
        batch = [repeated[:width]] * pairs
        best = math.inf
        for _ in range(repeats):
            pass_started = time.perf_counter()
            run_pass(runner, batch)
            best = min(best, time.perf_counter() - pass_started)
        return best

    run_pass(runner, [list(token_ids)[:GRID_SMALLEST] or [0]])  # first-call setup is not a cost
    points: list[tuple[float, float]] = []
    tokens = GRID_SMALLEST
    while tokens <= max(max_batch_tokens, GRID_SMALLEST):
        pairs, width = grid_shape(tokens)
        cost = runner.pass_tokens(PassShape(pairs, width, pairs * width))
        if points and cost <= points[-1][0]:
            tokens *= 2  # the same pass for a runner that pads to buckets: measured already
            continue
        repeats = GRID_REPEATS
        if points:
            predicted = _predicted_seconds(points, cost)
            repeats = GRID_REPEATS if predicted < SLOW_PASS_SECONDS else 1
            if time.perf_counter() - started + repeats * predicted > budget_seconds:
                break
        points.append((float(cost), timed(tokens, repeats)))
        tokens *= 2
    return PassCostModel(points)
