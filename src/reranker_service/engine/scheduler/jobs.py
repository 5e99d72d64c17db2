"""What a request hands the scheduler and gets back, and how it can fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from reranker_service.engine.runner.protocol import RunnerKind


class QueueFullError(Exception):
    """Accepting the request would put more pairs in the queue than allowed."""

    def __init__(self, requested: int, queued: int, limit: int) -> None:
        super().__init__(f"{requested} pairs requested, {queued} already queued, limit {limit}")
        self.requested = requested
        self.queued = queued
        self.limit = limit


class EngineStoppedError(Exception):
    """The scheduler is shutting down or stopped and takes no new work."""


class NonFiniteScoresError(Exception):
    """The pass gave this request's pair a score that is not a number (an overflow, which fp16
    can have); it is not answered with one."""

    def __init__(self, pairs: int, device: str) -> None:
        super().__init__(f"{pairs} pair(s) scored NaN or infinite on {device}")
        self.pairs = pairs
        self.device = device


class PairTooLargeError(Exception):
    """One pair alone does not fit in device memory."""

    def __init__(self, tokens: int) -> None:
        super().__init__(f"a pair of {tokens} tokens does not fit in device memory")
        self.tokens = tokens


@dataclass(frozen=True)
class BatchReport:
    """What one forward pass did; handed to the observer from the worker thread. Token counts
    are what the pass computed: a shared prefix computed in it counts once, and a cached one not
    at all."""

    pairs: int
    real_tokens: int
    padded_tokens: int
    """What the pass cost in its runner's geometry (``ModelRunner.pass_tokens``): padding
    included for a runner that pads, equal to ``real_tokens`` for one that packs."""
    reused_tokens: int
    """Prefix tokens the pass's pairs read from their request's cache instead of computing them,
    less the prefixes computed in this pass (so a request's n pairs save n - 1 prefixes)."""
    queue_wait_seconds: tuple[float, ...]
    inference_seconds: float
    failed: bool
    device: str
    """The worker that ran the pass."""
    queue_wait_priorities: tuple[int, ...] = ()
    """The priority of each pair whose wait is in ``queue_wait_seconds``, in its order."""
    runner: RunnerKind | None = None
    """The runner that ran it (it changes when a compiled runner takes over)."""


BatchObserver = Callable[[BatchReport], None]


@dataclass(frozen=True)
class PassShare:
    """One forward pass as one request saw it."""

    started_at: float
    """``time.perf_counter()`` when the pass's time began to count: its launch, or the end of
    the worker's pass before it, whichever was later."""
    seconds: float
    pairs: int
    """The request's pairs in the pass."""
    batch_pairs: int
    """All the pairs in the pass, the request's and other requests'."""
    reused_tokens: int
    """Prefix tokens the request's pairs read from its cache instead of computing them."""
    device: str


@dataclass(frozen=True)
class JobResult:
    scores: list[float]
    submitted_at: float
    """``time.perf_counter()`` when the request's pairs were queued."""
    queue_seconds: float
    """From submission until the request's first pair entered a forward pass."""
    inference_seconds: float
    """Summed forward-pass time of the batches that carried the request's pairs."""
    passes: tuple[PassShare, ...]
    """Those forward passes, in the order they finished."""


class ScoringJob:
    """One request's pairs. Scores are written by the worker threads only, under the
    scheduler's lock; the future is resolved on the owning event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, priority: int = 0) -> None:
        self._loop = loop
        self.priority = priority
        """Lower goes first (-10 to 10); see ``PairQueue``."""
        self.future: asyncio.Future[JobResult] = loop.create_future()
        self.scores: list[float] = [0.0] * size
        self.remaining = size
        self.submitted_at = time.perf_counter()
        self.first_batch_at: float | None = None
        self.inference_seconds = 0.0
        self.passes: list[PassShare] = []
        self.closed = False  # failed or withdrawn: the workers ignore its pairs
        self.prefix_id: int | None = None
        """The job's shared prefix, which its pairs start with and read from their runner; None
        when they compute all their tokens. Ids are never reused."""
        self.prefix_length = 0
        self.holds_prefix = False
        """Whether the prefix still counts against the scheduler's prefix budget: from
        submission until the job has no pair left to score."""

    def _resolve(self) -> None:
        if not self.future.done():
            started = self.first_batch_at or self.submitted_at
            self.future.set_result(
                JobResult(
                    self.scores,
                    self.submitted_at,
                    started - self.submitted_at,
                    self.inference_seconds,
                    tuple(self.passes),
                )
            )

    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def resolve_threadsafe(self) -> None:
        self._loop.call_soon_threadsafe(self._resolve)

    def fail_threadsafe(self, error: BaseException) -> None:
        self._loop.call_soon_threadsafe(self._fail, error)
