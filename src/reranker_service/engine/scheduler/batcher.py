"""Dynamic batching: one worker thread per model runner serves pairs from every request.

Requests put their tokenized pairs on one length-sorted queue and wait on a future. A free worker
takes the next batch (see ``batch_policy``), hands it to its runner off the event loop, writes
the scores into each request's slot and resolves a request's future, on its own loop, once its
last pair is scored. A pair's score depends only on its own tokens, so a request's results do
not depend on which other requests shared its batches, nor on which worker took them.

Where a runner's ``launch`` returns before the device has run the pass (a GPU), the worker
launches the next pass before it waits for the current one's scores, so the device never idles
while the host picks and describes a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    DeviceLostError,
    ModelRunner,
)
from reranker_service.engine.scheduler.jobs import (
    BatchObserver,
    BatchReport,
    EngineStoppedError,
    JobResult,
    NonFiniteScoresError,
    PairTooLargeError,
    QueueFullError,
    ScoringJob,
)
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scheduler.passes import Flight, QueuedPair, distinct_jobs
from reranker_service.engine.scheduler.queue import PairQueue

logger = structlog.get_logger(__name__)

T = TypeVar("T")

_prefix_ids = itertools.count()
"""Prefix ids, unique in the process: a runner that two schedulers share (tests serve one
loaded model from several apps) never takes one scheduler's prefix for the other's."""


@dataclass
class _WorkerState:
    """What one worker's thread owns: its runner, its pass-cost curve, its clock, and the
    prefixes its runner holds."""

    runner: ModelRunner
    name: str
    pass_costs: PassCostModel
    last_finished: float = 0.0
    thread: threading.Thread | None = None
    held_prefixes: set[int] = field(default_factory=set)
    """Prefix ids its runner keeps: read and written by the worker's thread only."""
    releases: list[int] = field(default_factory=list)
    """Prefix ids let go since the worker last took work, under the scheduler's lock: handed to
    the runner from the worker's own thread."""
    calls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = field(
        default_factory=list
    )
    """Work for the worker's thread between two passes (a graph capture, a runner swap), under
    the scheduler's lock."""
    serving: bool = True
    """False once its thread has ended, or its device is lost."""
    lost: str | None = None
    """Why its device serves no more (a sticky device error), once it does not."""


class Batcher:
    def __init__(
        self,
        runners: Sequence[ModelRunner],
        *,
        max_batch_tokens: int,
        max_queued_pairs: int,
        pass_costs: PassCostModel | None = None,
        max_prefix_tokens: int = 0,
        observer: BatchObserver | None = None,
        priority_max_wait_seconds: float = math.inf,
    ) -> None:
        """One worker per runner, named by its ``description.device``. Each starts from
        ``pass_costs``, which predicts a pass's time for the batch policy (none: the runner's
        pass tokens are the only cost), and learns from its own passes. ``max_prefix_tokens``
        bounds the shared prefixes held for the jobs in the queue (the runners keep their keys
        and values in device memory); a job past it is scored without its prefix. A pair
        waiting longer than ``priority_max_wait_seconds`` goes first whatever its priority."""
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        names = [runner.description.device for runner in runners]
        if len(set(names)) != len(names):
            raise ValueError("worker names must be distinct")
        points = pass_costs.points if pass_costs is not None else ()
        self._workers = [
            _WorkerState(runner, name, PassCostModel(points))
            for runner, name in zip(runners, names, strict=True)
        ]
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_pairs = max_queued_pairs
        self.max_prefix_tokens = max_prefix_tokens
        self.observer = observer
        self._prefixes_on_device = any(runner.keeps_prefixes for runner in runners)
        """Whether a prefix costs device memory while its job waits: only then does
        ``max_prefix_tokens`` bound them."""
        self._prefix_tokens_held = 0
        self._lock = threading.Lock()
        self._work_available = threading.Condition(self._lock)
        self._queue = PairQueue(priority_max_wait_seconds)
        self._accepting = True
        self._started = False

    @property
    def queued_pairs(self) -> int:
        return len(self._queue)

    @property
    def worker_names(self) -> list[str]:
        return [state.name for state in self._workers]

    @property
    def overlapping(self) -> bool:
        """Whether the workers launch the next pass before the current one's scores are in."""
        return all(state.runner.overlaps_passes for state in self._workers)

    @property
    def pass_costs(self) -> PassCostModel:
        """The first worker's pass-cost curve (each worker keeps its own current)."""
        return self._workers[0].pass_costs

    def set_pass_costs(self, points: Sequence[tuple[float, float]]) -> None:
        """Start every worker's curve from ``points`` (``(tokens, seconds)``)."""
        for state in self._workers:
            state.pass_costs = PassCostModel(points)

    @property
    def lost_devices(self) -> dict[str, str]:
        """Workers whose device failed for good, and why: only a new process serves on them."""
        return {state.name: state.lost for state in self._workers if state.lost is not None}

    def runner_of(self, name: str) -> ModelRunner:
        """The runner the worker serves on now."""
        return self._worker(name).runner

    @property
    def runners(self) -> list[ModelRunner]:
        """Each worker's runner now, in worker order."""
        return [state.runner for state in self._workers]

    def _worker(self, name: str) -> _WorkerState:
        for state in self._workers:
            if state.name == name:
                return state
        raise KeyError(f"no worker {name!r}")

    def run_on_worker(self, name: str, call: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run ``call`` on the worker's own thread, between two of its passes, with none in
        flight; its result (or error) in the future. Before the workers start, or after the
        worker has ended, it runs on the calling thread, or fails with ``EngineStoppedError``."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        state = self._worker(name)
        with self._lock:
            if self._started and state.serving:
                state.calls.append((call, future))
                self._work_available.notify_all()
                return future
        if self._started:
            future.set_exception(EngineStoppedError(f"worker {name} serves no more"))
        else:
            _run_into(call, future)
        return future

    def install_runner(
        self, name: str, runner: ModelRunner, pass_costs: Sequence[tuple[float, float]]
    ) -> concurrent.futures.Future[None]:
        """Make ``runner`` the worker's, with its pass-cost curve, at a pass boundary: the
        passes after it run on the new runner. The old one's prefixes are dropped with it (the
        queued jobs' pairs compute theirs again where the new runner needs them)."""
        state = self._worker(name)

        def swap() -> None:
            # What the old runner holds is let go with it, not kept alive by it.
            state.runner.release(sorted(state.held_prefixes))
            state.held_prefixes.clear()
            state.runner = runner
            state.pass_costs = PassCostModel(pass_costs)
            runner.bind_thread()
            with self._lock:
                self._prefixes_on_device = any(
                    worker.runner.keeps_prefixes for worker in self._workers
                )

        return self.run_on_worker(name, swap)

    def start(self) -> None:
        if self._started:
            raise RuntimeError("batcher already started")
        self._started = True
        for state in self._workers:
            state.thread = threading.Thread(
                target=self._serve,
                args=(state,),
                name=f"reranker-worker-{state.name}",
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
        self, sequences: Sequence[Sequence[int]], prefix_length: int = 0, priority: int = 0
    ) -> ScoringJob:
        """Queue a request's pairs, whose first ``prefix_length`` tokens are the same in all;
        call from the event loop that will await the job. The prefix is computed once per
        worker while the prefix budget has room, else every pair computes it. Lower
        ``priority`` goes first, within the queue's aging bound."""
        job = ScoringJob(asyncio.get_running_loop(), len(sequences), priority)
        if not sequences:
            job._resolve()
            return job
        now = time.perf_counter()
        with self._lock:
            if not self._accepting:
                lost = self.lost_devices
                if lost:
                    raise DeviceLostError("; ".join(lost.values()))
                raise EngineStoppedError("the engine is shutting down")
            queued = len(self._queue)
            if queued + len(sequences) > self.max_queued_pairs:
                raise QueueFullError(len(sequences), queued, self.max_queued_pairs)
            if prefix_length and self._prefix_fits(prefix_length):
                job.prefix_id, job.prefix_length = next(_prefix_ids), prefix_length
                job.holds_prefix = True
                self._prefix_tokens_held += prefix_length
            self._queue.add(job, sequences, now)
            self._work_available.notify()
        return job

    def _prefix_fits(self, prefix_length: int) -> bool:
        """Whether a new job may share its prefix: reuse is on (a budget above 0), and the
        prefixes held on the runners stay within it."""
        if not self.max_prefix_tokens:
            return False
        held = self._prefix_tokens_held + prefix_length
        return not self._prefixes_on_device or held <= self.max_prefix_tokens

    async def run(
        self, sequences: Sequence[Sequence[int]], prefix_length: int = 0, priority: int = 0
    ) -> JobResult:
        """``submit``, and wait for the job; a cancelled wait withdraws it."""
        job = self.submit(sequences, prefix_length, priority)
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
        """Let the job's prefix go on every worker: it has no pair left to score."""
        if job.holds_prefix and job.prefix_id is not None:
            job.holds_prefix = False
            self._prefix_tokens_held -= job.prefix_length
            for state in self._workers:
                if state.serving:  # an ended worker frees nothing more
                    state.releases.append(job.prefix_id)
            self._work_available.notify_all()  # idle workers free it now

    def _withdraw_locked(self, job: ScoringJob) -> None:
        job.closed = True
        self._release_prefix_locked(job)
        self._queue.remove(job)

    def _take_batch_locked(self, state: _WorkerState) -> list[QueuedPair]:
        batch = self._queue.take(
            self.max_batch_tokens,
            state.pass_costs.seconds,
            state.runner.pass_tokens,
            prefixes_in_every_pass=not state.runner.keeps_prefixes,
        )
        now = time.perf_counter()
        for pair in batch:
            if pair.job.first_batch_at is None:
                pair.job.first_batch_at = now
        if self._queue:
            self._work_available.notify()  # more than this batch waits: wake another worker
        return batch

    def _serve(self, state: _WorkerState) -> None:
        """One worker's loop, on its own thread, until the queue is drained after ``stop``,
        or its device is lost."""
        state.runner.bind_thread()
        in_flight: Flight | None = None
        try:
            while state.lost is None:
                with self._lock:
                    while (
                        not self._queue
                        and self._accepting
                        and in_flight is None
                        and not state.releases
                        and not state.calls
                    ):
                        self._work_available.wait()
                    calls, state.calls = state.calls, []
                    batch = self._take_batch_locked(state) if self._queue and not calls else None
                    released, state.releases = state.releases, []
                if released:
                    # Apart from any pass: a launch that raises would take them with it.
                    state.held_prefixes.difference_update(released)
                    state.runner.release(released)
                if calls:
                    if in_flight is not None:
                        self._finish_safely(state, in_flight)
                        in_flight = None
                    for call, future in calls:
                        if state.lost is None:
                            _run_into(call, future)
                        else:  # nothing more runs on a lost device: no capture, no swap
                            future.set_exception(DeviceLostError(state.lost))
                    continue
                if batch is None and in_flight is None:
                    if released:
                        continue
                    return
                launched = self._launch(state, batch) if batch is not None else None
                # The worker may now sleep for long; it must not keep the last requests alive.
                del batch
                if in_flight is not None:
                    self._finish_safely(state, in_flight)
                in_flight = launched
                # A launch that failed is finished at once: if it lost the device, no other
                # pass is launched on it.
                if in_flight is not None and (
                    not state.runner.overlaps_passes
                    or state.lost is not None
                    or in_flight.error is not None
                ):
                    self._finish_safely(state, in_flight)
                    in_flight = None
        finally:
            self._worker_ended(state)

    def _worker_ended(self, state: _WorkerState) -> None:
        """The worker takes no more work: calls waiting for it fail, and when no worker is left
        serving after its device was lost, nothing queued can be served either."""
        with self._lock:
            state.serving = False
            calls, state.calls = state.calls, []
            stranded: list[ScoringJob] = []
            if state.lost is not None and not any(w.serving for w in self._workers):
                self._accepting = False
                stranded = self._queue.jobs()
        for _, future in calls:
            future.set_exception(EngineStoppedError(f"worker {state.name} serves no more"))
        if stranded:
            self._fail_jobs(stranded, DeviceLostError(state.lost or state.name))

    def _launch(
        self, state: _WorkerState, batch: list[QueuedPair], *, retry: bool = False
    ) -> Flight:
        """Hand the pass over ``batch`` to the worker's runner; an error is kept for
        ``_finish``. The runner keeps the pass's new prefixes only if the launch succeeds."""
        prefixes = {pair.job.prefix_id for pair in batch if pair.job.prefix_id is not None}
        flight = Flight(
            state.name,
            batch,
            frozenset(prefixes - state.held_prefixes),
            time.perf_counter(),
            retry,
            distinct_jobs(batch),
            state.runner.kind,
        )
        try:
            flight.pending = state.runner.launch(flight.batch())
        except Exception as exc:
            flight.error = exc
        else:
            if state.runner.keeps_prefixes:
                state.held_prefixes.update(flight.new_prefixes)
        return flight

    def _finish_safely(self, state: _WorkerState, flight: Flight) -> None:
        try:
            self._finish(state, flight)
        except Exception as exc:  # a bug here must not strand every waiting request
            logger.exception("batch_failed", pairs=len(flight.pairs), device=flight.device)
            self._fail_jobs(flight.jobs, exc)

    def _finish(self, state: _WorkerState, flight: Flight) -> None:
        """Take a pass's scores and answer the requests it completes. Out of device memory, the
        batch is split in halves (it is sorted by length, so the short half is cheap) down to
        single pairs; only the requests of a pair that does not fit alone fail. A pair scored NaN
        or infinite fails its request, and only that one."""
        batch, error = flight.pairs, flight.error
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
        state.last_finished = finished
        record = flight.record(
            state.runner.pass_tokens, billed_from, finished - billed_from, failed=error is not None
        )
        with self._lock:
            for job in flight.jobs:
                job.inference_seconds += record.seconds
                job.passes.append(record.share(job))
        if error is None:
            state.pass_costs.observe(record.computed_tokens, record.seconds)
        # Report before answering: once a client has its scores, the batch is on record.
        self._report(record.report())
        if isinstance(error, BatchTooLargeError):
            # The error's traceback may hold the failed pass's memory: let it go before the
            # halves run.
            flight.error = error = None
            self._split_after_oom(state, batch, record.computed_tokens)
            return
        if isinstance(error, DeviceLostError):
            if state.lost is None:
                state.lost = str(error)
                logger.error("device_lost", device=state.name, error=str(error))
            self._fail_jobs(flight.jobs, error)
            return
        if error is not None:
            self._fail_jobs(flight.jobs, error)
            return
        self._answer(state, batch, scores)

    def _answer(self, state: _WorkerState, batch: list[QueuedPair], scores: list[float]) -> None:
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
                device=state.name,
                tokens=[pair.length for pair in not_finite],
            )
            for job in distinct_jobs(not_finite):
                pairs = sum(pair.job is job for pair in not_finite)
                self._fail_jobs([job], NonFiniteScoresError(pairs, state.name))
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
        self, state: _WorkerState, batch: list[QueuedPair], computed_tokens: int
    ) -> None:
        if len(batch) == 1:
            logger.warning("oom_pair_failed", tokens=batch[0].length, device=state.name)
            self._fail_jobs([batch[0].job], PairTooLargeError(batch[0].length))
            return
        logger.warning(
            "oom_batch_split", pairs=len(batch), padded_tokens=computed_tokens, device=state.name
        )
        half = len(batch) // 2
        for part in (batch[:half], batch[half:]):
            live = [pair for pair in part if not pair.job.closed]
            if live:
                self._finish(state, self._launch(state, live, retry=True))

    def _report(self, report: BatchReport) -> None:
        observer = self.observer
        if observer is None:
            return
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


def _run_into(call: Callable[[], T], future: concurrent.futures.Future[T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as exc:
        future.set_exception(exc)
