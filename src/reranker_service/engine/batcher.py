"""Dynamic batching: one worker thread per model replica serves pairs from every request.

Requests put their tokenized pairs on one length-sorted queue and wait on a future. A free worker
takes the next batch (see ``batch_policy``), runs the forward pass on its device off the event
loop, writes the scores into each request's slot and resolves a request's future, on its own
loop, once its last pair is scored. A pair's score depends only on its own tokens, so a
request's results do not depend on which other requests shared its batches, nor on which worker
took them.

On a device that computes asynchronously (a GPU), the worker launches the next pass before it
waits for the current one's scores, so the device never idles while the host picks, pads and
copies a batch.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from reranker_service.engine.batch_policy import select_window
from reranker_service.engine.pass_cost import PassCostModel
from reranker_service.engine.prefix import SharedPrefix
from reranker_service.engine.scoring import PairScorer, PassLauncher, PendingScores, ReadyScores

logger = structlog.get_logger(__name__)


class QueueFullError(Exception):
    """Accepting the request would put more pairs in the queue than allowed."""

    def __init__(self, requested: int, queued: int, limit: int) -> None:
        super().__init__(f"{requested} pairs requested, {queued} already queued, limit {limit}")
        self.requested = requested
        self.queued = queued
        self.limit = limit


class EngineStoppedError(Exception):
    """The batcher is shutting down or stopped and takes no new work."""


class BatchTooLargeError(Exception):
    """The scorer ran out of device memory on this batch; a smaller one may fit."""


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
    reused_tokens: int
    """Prefix tokens the pass's pairs read from their request's cache instead of computing them,
    less the prefixes computed in this pass (so a request's n pairs save n - 1 prefixes)."""
    queue_wait_seconds: tuple[float, ...]
    inference_seconds: float
    failed: bool
    device: str
    """The worker that ran the pass."""


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


BatchObserver = Callable[[BatchReport], None]


@dataclass(frozen=True)
class Worker:
    """One model replica: the batcher gives it a thread of its own, which calls
    ``bind_thread`` first and then runs every pass of the replica."""

    name: str
    """Distinct per worker (``cuda:1``, ``cpu:0``): metric label and key of prefix states."""
    scorer: PairScorer
    launcher: PassLauncher | None = None
    """With one, passes go through it and the next is launched before the current one's scores
    are awaited."""
    bind_thread: Callable[[], None] | None = None


class ScoringJob:
    """One request's pairs. Scores are written by the worker thread only; the future is
    resolved on the owning event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self._loop = loop
        self.future: asyncio.Future[JobResult] = loop.create_future()
        self.scores: list[float] = [0.0] * size
        self.remaining = size
        self.submitted_at = time.perf_counter()
        self.first_batch_at: float | None = None
        self.inference_seconds = 0.0
        self.passes: list[PassShare] = []
        self.closed = False  # failed or withdrawn: the worker ignores its pairs
        self.prefix: SharedPrefix | None = None
        """Held while the job has pairs to score; counted against the batcher's prefix budget."""

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


@dataclass(slots=True)
class _QueuedPair:
    cost: int
    """Tokens the pair computes: after its request's shared prefix, if one is held."""
    order: int
    length: int
    tokens: Sequence[int]
    job: ScoringJob
    position: int
    enqueued_at: float
    taken: bool = field(default=False)


def _sort_key(pair: _QueuedPair) -> tuple[int, int]:
    return pair.cost, pair.order


def _distinct_jobs(batch: Sequence[_QueuedPair]) -> list[ScoringJob]:
    return list({id(pair.job): pair.job for pair in batch}.values())


@dataclass(frozen=True)
class _PassTokens:
    real: int
    padded: int
    reused: int


def _pass_tokens(
    batch: Sequence[_QueuedPair],
    prefixes: Sequence[SharedPrefix | None],
    computed_prefixes: Sequence[SharedPrefix],
) -> _PassTokens:
    """What a right-padded pass over ``batch`` computes: each pair's tokens after its cached
    prefix, padded to the longest, plus the prefixes computed for it."""
    cached = [len(prefix) if prefix is not None else 0 for prefix in prefixes]
    own = [pair.length - skipped for pair, skipped in zip(batch, cached, strict=True)]
    prefix_work = sum(len(prefix) for prefix in computed_prefixes)
    return _PassTokens(
        real=sum(own) + prefix_work,
        padded=len(batch) * max(own) + prefix_work,
        reused=sum(cached) - prefix_work,
    )


def _pass_shares(flight: _Pass, started_at: float, seconds: float) -> dict[int, PassShare]:
    """Each of the pass's requests' part in it, by ``id(job)``."""
    pairs: dict[int, int] = {}
    reused: dict[int, int] = {}
    computed = {id(prefix) for prefix in flight.computed_prefixes}
    for pair, prefix in zip(flight.batch, flight.prefixes, strict=True):
        key = id(pair.job)
        pairs[key] = pairs.get(key, 0) + 1
        saved = 0
        if prefix is not None:
            saved = len(prefix)
            if id(prefix) in computed:  # computed here, once, for its request's pairs to read
                computed.discard(id(prefix))
                saved = 0
        reused[key] = reused.get(key, 0) + saved
    device = flight.worker.worker.name
    return {
        key: PassShare(started_at, seconds, count, len(flight.batch), reused[key], device)
        for key, count in pairs.items()
    }


class _Costs(Sequence[int]):
    """Read-only view of the queue's pair costs; the policy only looks near the anchor."""

    def __init__(self, pairs: list[_QueuedPair]) -> None:
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        return self._pairs[index].cost


@dataclass
class _WorkerState:
    """What one worker's thread owns: its replica, its pass-cost curve, its clock."""

    worker: Worker
    pass_costs: PassCostModel
    last_finished: float = 0.0
    thread: threading.Thread | None = None


@dataclass
class _Pass:
    """A launched forward pass whose scores its worker has not taken yet."""

    worker: _WorkerState
    batch: list[_QueuedPair]
    prefixes: list[SharedPrefix | None]
    computed_prefixes: list[SharedPrefix]
    """The prefixes it computes rather than reads from their cache."""
    launched_at: float
    retry: bool
    jobs: list[ScoringJob]
    """The requests its pairs belong to, each once."""
    pending: PendingScores | None = None
    error: Exception | None = None


class Batcher:
    def __init__(
        self,
        workers: Sequence[Worker],
        *,
        max_batch_tokens: int,
        max_queued_pairs: int,
        pass_costs: PassCostModel | None = None,
        max_prefix_tokens: int = 0,
        observer: BatchObserver | None = None,
    ) -> None:
        """Each worker starts from ``pass_costs``, which predicts a pass's time for the batch
        policy (none: padding is the only cost), and learns from its own passes.
        ``max_prefix_tokens`` bounds the shared prefixes held for the jobs in the queue (their
        keys and values take device memory); a job past it is scored without its prefix."""
        if not workers:
            raise ValueError("a batcher needs at least one worker")
        if len({worker.name for worker in workers}) != len(workers):
            raise ValueError("worker names must be distinct")
        points = pass_costs.points if pass_costs is not None else ()
        self._workers = [_WorkerState(worker, PassCostModel(points)) for worker in workers]
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_pairs = max_queued_pairs
        self.max_prefix_tokens = max_prefix_tokens
        self.observer = observer
        self._prefix_tokens_held = 0
        self._lock = threading.Lock()
        self._work_available = threading.Condition(self._lock)
        self._by_length: list[_QueuedPair] = []
        self._by_arrival: deque[_QueuedPair] = deque()
        self._next_order = 0
        self._accepting = True
        self._started = False

    @property
    def queued_pairs(self) -> int:
        return len(self._by_length)

    @property
    def worker_names(self) -> list[str]:
        return [state.worker.name for state in self._workers]

    @property
    def overlapping(self) -> bool:
        """Whether the workers launch the next pass before the current one's scores are in."""
        return all(state.worker.launcher is not None for state in self._workers)

    @property
    def pass_costs(self) -> PassCostModel:
        """The first worker's pass-cost curve (each worker keeps its own current)."""
        return self._workers[0].pass_costs

    def set_pass_costs(self, points: Sequence[tuple[float, float]]) -> None:
        """Start every worker's curve from ``points`` (``(tokens, seconds)``)."""
        for state in self._workers:
            state.pass_costs = PassCostModel(points)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("batcher already started")
        self._started = True
        for state in self._workers:
            state.thread = threading.Thread(
                target=self._serve,
                args=(state,),
                name=f"reranker-worker-{state.worker.name}",
                daemon=True,
            )
            state.thread.start()

    async def stop(self) -> None:
        """Refuse new work, let queued pairs finish, then end every worker."""
        with self._lock:
            self._accepting = False
            self._work_available.notify_all()
        for state in self._workers:
            if state.thread is not None:
                await asyncio.to_thread(state.thread.join)

    @property
    def prefix_tokens_held(self) -> int:
        """Tokens of the shared prefixes the queued jobs hold."""
        return self._prefix_tokens_held

    def submit(
        self, sequences: Sequence[Sequence[int]], prefix: SharedPrefix | None = None
    ) -> ScoringJob:
        """Queue a request's pairs, which all start with ``prefix`` if given; call from the event
        loop that will await the job."""
        job = ScoringJob(asyncio.get_running_loop(), len(sequences))
        if not sequences:
            job._resolve()
            return job
        now = time.perf_counter()
        with self._lock:
            if not self._accepting:
                raise EngineStoppedError("the engine is shutting down")
            queued = len(self._by_length)
            if queued + len(sequences) > self.max_queued_pairs:
                raise QueueFullError(len(sequences), queued, self.max_queued_pairs)
            skipped = 0
            if prefix is not None and (
                self._prefix_tokens_held + len(prefix) <= self.max_prefix_tokens
            ):
                job.prefix = prefix
                self._prefix_tokens_held += len(prefix)
                skipped = len(prefix)
            for position, tokens in enumerate(sequences):
                pair = _QueuedPair(
                    len(tokens) - skipped, self._next_order, len(tokens), tokens, job, position, now
                )
                self._next_order += 1
                bisect.insort(self._by_length, pair, key=_sort_key)
                self._by_arrival.append(pair)
            self._work_available.notify()
        return job

    async def score(
        self, sequences: Sequence[Sequence[int]], prefix: SharedPrefix | None = None
    ) -> JobResult:
        job = self.submit(sequences, prefix)
        try:
            return await job.future
        except asyncio.CancelledError:
            self.withdraw(job)
            raise

    def withdraw(self, job: ScoringJob) -> None:
        """Drop a job's pairs that have not reached a forward pass yet."""
        with self._lock:
            self._withdraw_locked(job)

    def _release_prefix_locked(self, job: ScoringJob) -> None:
        """Free the job's prefix caches, on every worker: it has no pair left to score."""
        if job.prefix is not None:
            self._prefix_tokens_held -= len(job.prefix)
            job.prefix.states.clear()
            job.prefix = None

    def _withdraw_locked(self, job: ScoringJob) -> None:
        job.closed = True
        self._release_prefix_locked(job)
        kept = []
        for pair in self._by_length:
            if pair.job is job:
                pair.taken = True
            else:
                kept.append(pair)
        self._by_length = kept
        self._forget_taken_heads()

    def _forget_taken_heads(self) -> None:
        """Keep the arrival order's head a waiting pair, and release finished pairs' memory."""
        while self._by_arrival and self._by_arrival[0].taken:
            self._by_arrival.popleft()

    def _take_batch_locked(self, state: _WorkerState) -> list[_QueuedPair]:
        anchor = self._by_arrival[0]
        anchor_index = bisect.bisect_left(self._by_length, _sort_key(anchor), key=_sort_key)
        start, stop = select_window(
            _Costs(self._by_length), anchor_index, self.max_batch_tokens, state.pass_costs.seconds
        )
        batch = self._by_length[start:stop]
        del self._by_length[start:stop]
        now = time.perf_counter()
        for pair in batch:
            pair.taken = True
            if pair.job.first_batch_at is None:
                pair.job.first_batch_at = now
        self._forget_taken_heads()
        if self._by_length:
            self._work_available.notify()  # more than this batch waits: wake another worker
        return batch

    def _serve(self, state: _WorkerState) -> None:
        """One worker's loop, on its own thread, until the queue is drained after ``stop``."""
        worker = state.worker
        if worker.bind_thread is not None:
            worker.bind_thread()
        in_flight: _Pass | None = None
        while True:
            with self._lock:
                while not self._by_length and self._accepting and in_flight is None:
                    self._work_available.wait()
                batch = self._take_batch_locked(state) if self._by_length else None
            if batch is None and in_flight is None:
                return
            launched = self._launch(state, batch) if batch is not None else None
            # The worker may now sleep for long; it must not keep the last requests alive.
            del batch
            if in_flight is not None:
                self._finish_safely(in_flight)
            in_flight = launched
            if in_flight is not None and worker.launcher is None:
                self._finish_safely(in_flight)
                in_flight = None

    def _launch(
        self, state: _WorkerState, batch: list[_QueuedPair], *, retry: bool = False
    ) -> _Pass:
        """Start the pass over ``batch`` on the worker's replica; a scorer error is kept for
        ``_finish``."""
        name = state.worker.name
        prefixes = [pair.job.prefix for pair in batch]
        flight = _Pass(
            state,
            batch,
            prefixes,
            # Known before the pass: the prefixes it will compute rather than read from cache.
            list({id(p): p for p in prefixes if p is not None and name not in p.states}.values()),
            time.perf_counter(),
            retry,
            _distinct_jobs(batch),
        )
        sequences = [pair.tokens for pair in batch]
        launcher = state.worker.launcher
        try:
            if launcher is not None:
                flight.pending = launcher.launch(sequences, prefixes)
            else:
                flight.pending = ReadyScores(state.worker.scorer.score(sequences, prefixes))
        except Exception as exc:
            flight.error = exc
        return flight

    def _finish_safely(self, flight: _Pass) -> None:
        try:
            self._finish(flight)
        except Exception as exc:  # a bug here must not strand every waiting request
            logger.exception(
                "batch_failed", pairs=len(flight.batch), device=flight.worker.worker.name
            )
            self._fail_jobs(flight.jobs, exc)

    def _finish(self, flight: _Pass) -> None:
        """Take a pass's scores and answer the requests it completes. Out of device memory, the
        batch is split in halves (it is sorted by length, so the short half is cheap) down to
        single pairs; only the requests of a pair that does not fit alone fail. A pair scored NaN
        or infinite fails its request, and only that one."""
        state = flight.worker
        batch, error = flight.batch, flight.error
        scores: list[float] = []
        if error is None and flight.pending is not None:
            try:
                scores = flight.pending.result()
            except Exception as exc:
                error = exc
        flight.pending = None
        finished = time.perf_counter()
        # Overlapping passes: each is billed the device time after the one before it ended.
        billed_from = max(flight.launched_at, state.last_finished)
        elapsed = finished - billed_from
        state.last_finished = finished
        jobs = flight.jobs
        tokens = _pass_tokens(batch, flight.prefixes, flight.computed_prefixes)
        shares = _pass_shares(flight, billed_from, elapsed)
        with self._lock:
            for job in jobs:
                job.inference_seconds += elapsed
                job.passes.append(shares[id(job)])
        if error is None:
            state.pass_costs.observe(tokens.padded, elapsed)
        # Report before answering: once a client has its scores, the batch is on record.
        self._report(flight, tokens, elapsed, failed=error is not None)
        if isinstance(error, BatchTooLargeError):
            # The error's traceback may hold the failed pass's memory: let it go before the
            # halves run.
            flight.error = error = None
            self._split_after_oom(state, batch, tokens)
            return
        if error is not None:
            self._fail_jobs(jobs, error)
            return
        self._answer(state, batch, scores)

    def _answer(self, state: _WorkerState, batch: list[_QueuedPair], scores: list[float]) -> None:
        """Write the scores into their jobs, under the lock: other workers write into the same
        jobs. A job whose pair is not a number fails instead."""
        not_finite = [
            pair for pair, score in zip(batch, scores, strict=True) if not math.isfinite(score)
        ]
        if not_finite:
            logger.error(
                "non_finite_scores",
                pairs=len(not_finite),
                batch_pairs=len(batch),
                device=state.worker.name,
                tokens=[pair.length for pair in not_finite],
            )
            failed = _distinct_jobs(not_finite)
            for job in failed:
                pairs = sum(pair.job is job for pair in not_finite)
                self._fail_jobs([job], NonFiniteScoresError(pairs, state.worker.name))
        with self._lock:
            for pair, score in zip(batch, scores, strict=True):
                job = pair.job
                if job.closed:
                    continue
                job.scores[pair.position] = score
                job.remaining -= 1
                if job.remaining == 0:
                    job.resolve_threadsafe()
                    self._release_prefix_locked(job)

    def _split_after_oom(
        self, state: _WorkerState, batch: list[_QueuedPair], tokens: _PassTokens
    ) -> None:
        name = state.worker.name
        if len(batch) == 1:
            logger.warning("oom_pair_failed", tokens=batch[0].length, device=name)
            self._fail_jobs([batch[0].job], PairTooLargeError(batch[0].length))
            return
        logger.warning(
            "oom_batch_split", pairs=len(batch), padded_tokens=tokens.padded, device=name
        )
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            live = [pair for pair in part if not pair.job.closed]
            if live:
                self._finish(self._launch(state, live, retry=True))

    def _report(self, flight: _Pass, tokens: _PassTokens, elapsed: float, *, failed: bool) -> None:
        observer = self.observer
        if observer is None:
            return
        report = BatchReport(
            pairs=len(flight.batch),
            real_tokens=tokens.real,
            padded_tokens=tokens.padded,
            reused_tokens=tokens.reused,
            # A retried pair's wait was reported with its first pass.
            queue_wait_seconds=()
            if flight.retry
            else tuple(flight.launched_at - pair.enqueued_at for pair in flight.batch),
            inference_seconds=elapsed,
            failed=failed,
            device=flight.worker.worker.name,
        )
        try:
            observer(report)
        except Exception:
            logger.exception("batch_observer_failed")

    def _fail_jobs(self, jobs: list[ScoringJob], error: Exception) -> None:
        with self._lock:
            for job in jobs:
                if not job.closed:
                    self._withdraw_locked(job)
                    job.fail_threadsafe(error)
