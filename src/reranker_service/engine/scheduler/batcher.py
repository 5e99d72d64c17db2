"""Dynamic batching: one worker thread per model runner serves pairs from every request.

Requests put their tokenized pairs on one length-sorted queue and wait on a future. A free worker
asks the scheduler (``core.Scheduler``) what to run next, hands that pass to its runner off the
event loop, gives what came back to the scheduler, which writes the scores into each request's
slot, and resolves a request's future, on its own loop, once its last pair is scored. A pair's
score depends only on its own tokens, so a request's results do not depend on which other
requests shared its batches, nor on which worker took them.

This module is the mechanism around the scheduler's decisions: the lock, the threads, the
runner calls, the observer and the futures. Where a runner's ``launch`` returns before the
device has run the pass (a GPU), the worker launches the next pass before it waits for the
current one's scores, so the device never idles while the host picks and describes a batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from reranker_service.engine.runner.protocol import DeviceLostError, ModelRunner
from reranker_service.engine.scheduler.clock import DEFAULT_CLOCK, Clock
from reranker_service.engine.scheduler.core import (
    Answers,
    PassOutcome,
    Scheduler,
    SchedulerOutput,
    WorkerSlot,
)
from reranker_service.engine.scheduler.jobs import (
    BatchObserver,
    BatchReport,
    EngineStoppedError,
    JobResult,
    ScoringJob,
)
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scheduler.passes import Flight, QueuedPair
from reranker_service.engine.scheduler.prefixes import PrefixManager

logger = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class _WorkerState:
    """What one worker's thread owns: its runner and thread, and the calls waiting for it. The
    scheduler keeps the rest (``WorkerSlot``: its curve, its clock, whether its device is
    lost; ``PrefixManager``: the prefixes its runner holds)."""

    runner: ModelRunner
    slot: WorkerSlot
    thread: threading.Thread | None = None
    calls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = field(
        default_factory=list
    )
    """Work for the worker's thread between two passes (a graph capture, a runner swap), under
    the batcher's lock."""
    serving: bool = True
    """False once its thread has ended, or its device is lost."""

    @property
    def name(self) -> str:
        return self.slot.name

    @property
    def lost(self) -> str | None:
        return self.slot.lost


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
        clock: Clock = DEFAULT_CLOCK,
    ) -> None:
        """One worker per runner, named by its ``description.device``. Each starts from
        ``pass_costs``, which predicts a pass's time for the batch policy (none: the runner's
        pass tokens are the only cost), and learns from its own passes. ``max_prefix_tokens``
        bounds the shared prefixes held for the jobs in the queue (the runners keep their keys
        and values in device memory); a job past it is scored without its prefix. A pair
        waiting longer than ``priority_max_wait_seconds`` goes first whatever its priority.
        ``clock`` is what every wait and pass is timed on."""
        if not runners:
            raise ValueError("a batcher needs at least one runner")
        names = [runner.description.device for runner in runners]
        if len(set(names)) != len(names):
            raise ValueError("worker names must be distinct")
        points = pass_costs.points if pass_costs is not None else ()
        self._clock = clock
        self._core = Scheduler(
            max_batch_tokens=max_batch_tokens,
            max_queued_pairs=max_queued_pairs,
            prefixes=PrefixManager(
                max_prefix_tokens, on_device=any(runner.keeps_prefixes for runner in runners)
            ),
            priority_max_wait_seconds=priority_max_wait_seconds,
            clock=clock,
        )
        self._workers = []
        for runner, name in zip(runners, names, strict=True):
            slot = WorkerSlot(
                name, runner.pass_tokens, runner.keeps_prefixes, PassCostModel(points)
            )
            self._core.add_worker(slot)
            self._workers.append(_WorkerState(runner, slot))
        self.observer = observer
        self._lock = threading.Lock()
        self._work_available = threading.Condition(self._lock)
        self._accepting = True
        self._started = False

    @property
    def max_batch_tokens(self) -> int:
        return self._core.max_batch_tokens

    @property
    def max_queued_pairs(self) -> int:
        return self._core.max_queued_pairs

    @property
    def max_prefix_tokens(self) -> int:
        return self._core.prefixes.max_prefix_tokens

    @property
    def queued_pairs(self) -> int:
        return self._core.queued_pairs

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
        return self._workers[0].slot.pass_costs

    def set_pass_costs(self, points: Sequence[tuple[float, float]]) -> None:
        """Start every worker's curve from ``points`` (``(tokens, seconds)``)."""
        for state in self._workers:
            state.slot.pass_costs = PassCostModel(points)

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
            state.runner.release(self._core.prefixes.drop_held(name))
            state.runner = runner
            runner.bind_thread()
            with self._lock:
                slot = state.slot
                slot.pass_tokens, slot.keeps_prefixes = runner.pass_tokens, runner.keeps_prefixes
                slot.pass_costs = PassCostModel(pass_costs)
                self._core.prefixes.on_device = any(
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
        return self._core.prefixes.tokens_held

    def submit(
        self, sequences: Sequence[Sequence[int]], prefix_length: int = 0, priority: int = 0
    ) -> ScoringJob:
        """Queue a request's pairs, whose first ``prefix_length`` tokens are the same in all;
        call from the event loop that will await the job. The prefix is computed once per
        worker while the prefix budget has room, else every pair computes it. Lower
        ``priority`` goes first, within the queue's aging bound."""
        loop = asyncio.get_running_loop()
        job = ScoringJob(loop, len(sequences), priority, submitted_at=self._clock())
        if not sequences:
            self._core.complete_empty(job)
            job._resolve()
            return job
        with self._lock:
            if not self._accepting:
                lost = self.lost_devices
                if lost:
                    raise DeviceLostError("; ".join(lost.values()))
                raise EngineStoppedError("the engine is shutting down")
            self._core.admit(job, sequences, prefix_length)
            self._work_available.notify()
        return job

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
            self._answer_locked(self._core.withdraw(job))

    def _answer_locked(self, answers: Answers) -> None:
        """Tell the finished jobs on their loops; wake idle workers to free released prefixes
        now."""
        for job in answers.jobs:
            job.deliver_threadsafe()
        if answers.released_prefixes:
            self._work_available.notify_all()

    def _serve(self, state: _WorkerState) -> None:
        """One worker's loop, on its own thread, until the queue is drained after ``stop``,
        or its device is lost: ask the scheduler, run what it says, hand back the outcome."""
        state.runner.bind_thread()
        in_flight: Flight | None = None
        try:
            while state.lost is None:
                with self._lock:
                    while (
                        not self._core.queued_pairs
                        and self._accepting
                        and in_flight is None
                        and not self._core.prefixes.has_releases(state.name)
                        and not state.calls
                    ):
                        self._work_available.wait()
                    calls, state.calls = state.calls, []
                    output = self._core.schedule(state.name, take_pass=not calls)
                    if output.more_waiting:
                        self._work_available.notify()  # more than this pass waits: wake another
                if output.released:
                    state.runner.release(output.released)
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
                if not output.pairs and in_flight is None:
                    if output.released:
                        continue
                    return
                launched = self._launch(state, output) if output.pairs else None
                # The worker may now sleep for long; it must not keep the last requests alive.
                del output
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
            self._core.prefixes.retire(state.name)
            calls, state.calls = state.calls, []
            stranded: list[ScoringJob] = []
            if state.lost is not None and not any(w.serving for w in self._workers):
                self._accepting = False
                stranded = self._core.queue.jobs()
        for _, future in calls:
            future.set_exception(EngineStoppedError(f"worker {state.name} serves no more"))
        if stranded:
            self._fail_jobs(stranded, DeviceLostError(state.lost or state.name))

    def _launch(self, state: _WorkerState, output: SchedulerOutput) -> Flight:
        """Hand the scheduled pass to the worker's runner; an error is kept for ``_finish``.
        The runner keeps the pass's new prefixes only if the launch succeeds."""
        flight = output.flight(self._clock(), state.runner.kind)
        try:
            flight.pending = state.runner.launch(flight.batch())
        except Exception as exc:
            flight.error = exc
        else:
            self._core.launched(output)
        return flight

    def _finish_safely(self, state: _WorkerState, flight: Flight) -> None:
        try:
            self._finish(state, flight)
        except Exception as exc:  # a bug here must not strand every waiting request
            logger.exception("batch_failed", pairs=len(flight.pairs), device=flight.device)
            self._fail_jobs(flight.jobs, exc)

    def _finish(self, state: _WorkerState, flight: Flight) -> None:
        """Take a pass's scores, have the scheduler apply them, report the pass, then answer
        its requests. The halves of a pass out of memory run here, one after the other (each
        with its own halves), once the failed pass's error (whose traceback may hold its
        memory) is let go."""
        retries = list(reversed(self._complete(state, flight)))
        del flight
        while retries:
            with self._lock:
                output = self._core.schedule_retry(state.name, retries.pop())
            if output is not None:
                retries.extend(reversed(self._complete(state, self._launch(state, output))))
            del output

    def _complete(self, state: _WorkerState, flight: Flight) -> list[list[QueuedPair]]:
        """Wait for one pass's scores and apply them; the halves to retry, in order."""
        scores: list[float] = []
        error, flight.error = flight.error, None
        if error is None and flight.pending is not None:
            try:
                scores = flight.pending.result()
            except Exception as exc:
                error = exc
        flight.pending = None
        outcome = PassOutcome(scores, error, self._clock())
        del error
        with self._lock:
            update = self._core.update(flight, outcome)
        del outcome
        # Report before answering: once a client has its scores, the batch is on record.
        self._report(update.record.report())
        with self._lock:
            self._answer_locked(update.answers)
        return update.retries

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
            self._answer_locked(self._core.fail(jobs, error))


def _run_into(call: Callable[[], T], future: concurrent.futures.Future[T]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as exc:
        future.set_exception(exc)
