"""What a request hands the scheduler and gets back, and how it can fail."""

from __future__ import annotations

import asyncio
import enum
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
    """The scheduler's clock (``time.perf_counter()`` unless one is injected) when the pass's
    time began to count: its launch, or the end of the worker's pass before it, whichever was
    later."""
    seconds: float
    pairs: int
    """The request's pairs in the pass."""
    batch_pairs: int
    """All the pairs in the pass, the request's and other requests'."""
    reused_tokens: int
    """Prefix tokens the request's pairs read from its cache instead of computing them."""
    device: str
    failed: bool = False
    """The pass failed (out of memory: its pairs ran again in halves); it scored nothing."""


@dataclass(frozen=True)
class JobResult:
    scores: list[float]
    submitted_at: float
    """The scheduler's clock (``time.perf_counter()`` unless one is injected) when the
    request's pairs were queued."""
    queue_seconds: float
    """From submission until the request's first pair entered a forward pass."""
    inference_seconds: float
    """Summed forward-pass time of the batches that carried the request's pairs."""
    passes: tuple[PassShare, ...]
    """Those forward passes, in the order they finished."""


class JobState(enum.Enum):
    """Where a request is in its life. Only the scheduler (``scheduler.core``) moves a job from
    one state to the next; the three last are final."""

    WAITING = "waiting"
    """Its pairs are queued; none has been taken into a pass yet."""
    RUNNING = "running"
    """Some of its pairs have been taken into a pass; not all are scored."""
    DONE = "done"
    """Every pair scored: its result is (or is being) delivered."""
    FAILED = "failed"
    """A pass failed it (an error, NaN scores, a pair too large): ``error`` says why."""
    WITHDRAWN = "withdrawn"
    """Its caller gave up (a cancelled wait, a timeout): nothing more is computed or sent."""

    @property
    def finished(self) -> bool:
        return self in _FINAL

    @property
    def open(self) -> bool:
        """Whether its pairs are still wanted: a pass's scores are written into it."""
        return self not in _CLOSED


_FINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.WITHDRAWN})
_CLOSED = frozenset({JobState.FAILED, JobState.WITHDRAWN})


class ScoringJob:
    """One request's pairs. Its state, scores and counts are written by the scheduler only,
    under the batcher's lock (two workers may answer pairs of one job); its future is resolved
    on the owning event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        size: int,
        priority: int = 0,
        *,
        submitted_at: float,
    ) -> None:
        self._loop = loop
        self.priority = priority
        """Lower goes first (-10 to 10); see ``PairQueue``."""
        self.future: asyncio.Future[JobResult] = loop.create_future()
        self.state = JobState.WAITING
        self.error: Exception | None = None
        """Why it failed, once ``FAILED``."""
        self.scores: list[float] = [0.0] * size
        self.unscored = size
        """Pairs whose score has not been written yet: the job is done at 0."""
        self.submitted_at = submitted_at
        """The scheduler's clock when the request's pairs were queued."""
        self.first_batch_at: float | None = None
        self.inference_seconds = 0.0
        self.passes: list[PassShare] = []
        self.prefix_id: int | None = None
        """The job's shared prefix, which its pairs start with and read from their runner; None
        when they compute all their tokens. Ids are never reused (``PrefixManager``)."""
        self.prefix_length = 0

    def result(self) -> JobResult:
        started = self.first_batch_at or self.submitted_at
        return JobResult(
            self.scores,
            self.submitted_at,
            started - self.submitted_at,
            self.inference_seconds,
            tuple(self.passes),
        )

    def _resolve(self) -> None:
        if not self.future.done():  # its awaiter may have cancelled it
            self.future.set_result(self.result())

    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def deliver_threadsafe(self) -> None:
        """Hand a finished job's outcome to its future, on its loop: the scores once ``DONE``,
        the error once ``FAILED``; nothing for a withdrawn job, whose caller left."""
        if self.state is JobState.DONE:
            self._loop.call_soon_threadsafe(self._resolve)
        elif self.state is JobState.FAILED and self.error is not None:
            self._loop.call_soon_threadsafe(self._fail, self.error)
