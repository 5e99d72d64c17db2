"""The scheduler's decisions and bookkeeping, with no thread, no lock and no runner call.

Three verbs, as vLLM's engine core has them: ``schedule`` says what a worker runs next (a
``SchedulerOutput``: the pairs of its next pass, the prefixes that pass computes, the prefixes
to let go first), the worker runs it (``batcher``: the only place a runner is called), and
``update`` applies what came back (``PassOutcome``): scores into their jobs, each job's state,
the pass's record, the worker's pass-cost curve, a failed pass's requests, halves to retry
after running out of memory. A job's state (``JobState``) changes here only. Time is read from
the clock it is given, so these steps are tested on a fake clock, one pass at a time.

Not thread-safe: the batcher calls every method under its lock, except ``launched``, which
touches only the calling worker's own prefix set (see ``PrefixManager``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    DeviceLostError,
    PassShape,
    RunnerKind,
)
from reranker_service.engine.scheduler.clock import DEFAULT_CLOCK, Clock
from reranker_service.engine.scheduler.jobs import (
    JobState,
    NonFiniteScoresError,
    PairTooLargeError,
    QueueFullError,
    ScoringJob,
)
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scheduler.passes import (
    Flight,
    PassRecord,
    QueuedPair,
    distinct_jobs,
)
from reranker_service.engine.scheduler.prefixes import PrefixManager
from reranker_service.engine.scheduler.queue import PairQueue

logger = structlog.get_logger(__name__)


@dataclass
class WorkerSlot:
    """What the scheduler knows of one worker: its runner's geometry, whether that runner keeps
    prefixes, its pass-cost curve and when its last pass ended. Changed with its runner."""

    name: str
    pass_tokens: Callable[[PassShape], int]
    keeps_prefixes: bool
    pass_costs: PassCostModel
    last_finished: float = 0.0
    """When its last pass's scores were in: an overlapping pass is billed from then."""
    lost: str | None = None
    """Why its device serves no more (a sticky device error), once it does not."""


@dataclass(frozen=True)
class SchedulerOutput:
    """What one worker is to do next, in plain data: let ``released`` go on its runner, then
    run a pass over ``pairs`` (none: no pass) computing ``new_prefixes``."""

    worker: str
    pairs: list[QueuedPair]
    new_prefixes: frozenset[int]
    released: list[int]
    retry: bool = False
    """A half of a pass that ran out of memory: its pairs' waits were reported already."""
    more_waiting: bool = False
    """Pairs are still queued after this pass: another worker may take them."""

    def flight(self, launched_at: float, runner: RunnerKind | None = None) -> Flight:
        """The pass as it is handed to a runner ``launched_at``."""
        return Flight(
            self.worker,
            self.pairs,
            self.new_prefixes,
            launched_at,
            self.retry,
            distinct_jobs(self.pairs),
            runner,
        )


@dataclass(frozen=True)
class PassOutcome:
    """What running a pass gave: its raw scores in pair order, or the error it raised (at its
    launch or from its scores), and when its scores were in."""

    scores: Sequence[float]
    error: Exception | None
    finished_at: float


@dataclass
class Answers:
    """Jobs that reached a final state, to be told on their loops in this order, and whether
    prefixes were let go (a worker has releases to hand its runner)."""

    jobs: list[ScoringJob] = field(default_factory=list)
    released_prefixes: bool = False

    def extend(self, other: Answers) -> None:
        self.jobs.extend(other.jobs)
        self.released_prefixes |= other.released_prefixes


@dataclass
class PassUpdate:
    """What ``update`` decided about a finished pass. It holds no reference to the pass's
    error: the halves of a pass out of memory must run with the failed pass's memory free."""

    record: PassRecord
    answers: Answers
    retries: list[list[QueuedPair]]
    """Halves of a pass that ran out of memory, to run in this order, each only once the one
    before it (and its own halves) finished."""


class Scheduler:
    def __init__(
        self,
        *,
        max_batch_tokens: int,
        max_queued_pairs: int,
        prefixes: PrefixManager,
        priority_max_wait_seconds: float = math.inf,
        clock: Clock = DEFAULT_CLOCK,
    ) -> None:
        self.max_batch_tokens = max_batch_tokens
        self.max_queued_pairs = max_queued_pairs
        self.prefixes = prefixes
        self.clock = clock
        self.queue = PairQueue(priority_max_wait_seconds, clock)
        self.workers: dict[str, WorkerSlot] = {}

    def add_worker(self, slot: WorkerSlot) -> None:
        self.workers[slot.name] = slot
        self.prefixes.add_worker(slot.name)

    @property
    def queued_pairs(self) -> int:
        return len(self.queue)

    # Admission.

    def admit(
        self, job: ScoringJob, sequences: Sequence[Sequence[int]], prefix_length: int
    ) -> None:
        """Queue a job's pairs, whose first ``prefix_length`` tokens are shared, with its
        prefix held while the budget has room; ``QueueFullError`` past the queue's limit."""
        queued = len(self.queue)
        if queued + len(sequences) > self.max_queued_pairs:
            raise QueueFullError(len(sequences), queued, self.max_queued_pairs)
        prefix_id = self.prefixes.grant(prefix_length)
        if prefix_id is not None:
            job.prefix_id, job.prefix_length = prefix_id, prefix_length
        self.queue.add(job, sequences)

    def complete_empty(self, job: ScoringJob) -> None:
        """A job without pairs is done as it is submitted, whether or not work is accepted."""
        job.state = JobState.DONE

    def withdraw(self, job: ScoringJob) -> Answers:
        """The job's caller gave up: its waiting pairs leave the queue, its prefix is let go,
        and the scores of its pairs in flight are dropped."""
        if job.state.finished:
            return Answers()
        return self._close(job, JobState.WITHDRAWN, None)

    def fail(self, jobs: Sequence[ScoringJob], error: Exception) -> Answers:
        """Fail every job of ``jobs`` that is not finished yet with ``error``."""
        answers = Answers()
        for job in jobs:
            if not job.state.finished:
                answers.extend(self._close(job, JobState.FAILED, error))
        return answers

    def _close(self, job: ScoringJob, state: JobState, error: Exception | None) -> Answers:
        job.state, job.error = state, error
        released = self.prefixes.release(job.prefix_id)
        self.queue.remove(job)
        return Answers([job] if state is JobState.FAILED else [], released)

    # Step 1: what to run.

    def schedule(self, worker: str, *, take_pass: bool = True) -> SchedulerOutput:
        """The worker's next step: its pending prefix releases and, where ``take_pass`` and
        pairs wait, the next pass (``batch_policy``, anchored by ``PairQueue``)."""
        slot = self.workers[worker]
        released = self.prefixes.take_releases(worker)
        if not take_pass or not self.queue:
            return SchedulerOutput(worker, [], frozenset(), released)
        pairs = self.queue.take(
            self.max_batch_tokens,
            slot.pass_costs.seconds,
            slot.pass_tokens,
            prefixes_in_every_pass=not slot.keeps_prefixes,
        )
        now = self.clock()
        for pair in pairs:
            job = pair.job
            if job.first_batch_at is None:
                job.first_batch_at = now
            if job.state is JobState.WAITING:
                job.state = JobState.RUNNING
        return SchedulerOutput(
            worker,
            pairs,
            self._new_prefixes(worker, pairs),
            released,
            more_waiting=bool(self.queue),
        )

    def schedule_retry(self, worker: str, pairs: list[QueuedPair]) -> SchedulerOutput | None:
        """A half of a pass that ran out of memory, less the pairs of jobs closed meanwhile;
        None when none is left."""
        live = [pair for pair in pairs if pair.job.state.open]
        if not live:
            return None
        return SchedulerOutput(worker, live, self._new_prefixes(worker, live), [], retry=True)

    def _new_prefixes(self, worker: str, pairs: Sequence[QueuedPair]) -> frozenset[int]:
        read = {pair.job.prefix_id for pair in pairs if pair.job.prefix_id is not None}
        return self.prefixes.new_in_pass(worker, read)

    def launched(self, output: SchedulerOutput) -> None:
        """The pass was handed to the worker's runner without an error: a runner that keeps
        prefixes now holds its new ones (one that raised keeps none)."""
        if self.workers[output.worker].keeps_prefixes:
            self.prefixes.kept(output.worker, output.new_prefixes)

    # Step 3: apply what came back.

    def update(self, flight: Flight, outcome: PassOutcome) -> PassUpdate:
        """Apply a finished pass: bill it (an overlapping pass from the end of the one before
        it), share it with its requests, teach the worker's curve its time, then answer. Out of
        device memory, the pass is split in halves (it is sorted by length, so the short half is
        cheap) down to single pairs; only the requests of a pair that does not fit alone fail.
        A pair scored NaN or infinite fails its request, and only that one."""
        slot = self.workers[flight.device]
        error = outcome.error
        billed_from = max(flight.launched_at, slot.last_finished)
        slot.last_finished = outcome.finished_at
        record = flight.record(
            slot.pass_tokens,
            billed_from,
            outcome.finished_at - billed_from,
            failed=error is not None,
        )
        for job in flight.jobs:
            job.inference_seconds += record.seconds
            job.passes.append(record.share(job))
        if error is None:
            slot.pass_costs.observe(record.computed_tokens, record.seconds)
        if isinstance(error, BatchTooLargeError):
            retries, answers = self._split_after_oom(slot, flight.pairs, record.computed_tokens)
            return PassUpdate(record, answers, retries)
        if isinstance(error, DeviceLostError):
            if slot.lost is None:
                slot.lost = str(error)
                logger.error("device_lost", device=slot.name, error=str(error))
            return PassUpdate(record, self.fail(flight.jobs, error), [])
        if error is not None:
            return PassUpdate(record, self.fail(flight.jobs, error), [])
        return PassUpdate(record, self._answer(slot, flight.pairs, outcome.scores), [])

    def _answer(
        self, slot: WorkerSlot, pairs: Sequence[QueuedPair], scores: Sequence[float]
    ) -> Answers:
        """Write the scores into their jobs; a job whose pair is not a number fails instead."""
        answers = Answers()
        not_finite = [
            pair for pair, score in zip(pairs, scores, strict=True) if not math.isfinite(score)
        ]
        if not_finite:
            logger.error(
                "non_finite_scores",
                pairs=len(not_finite),
                batch_pairs=len(pairs),
                device=slot.name,
                tokens=[pair.length for pair in not_finite],
            )
            for job in distinct_jobs(not_finite):
                count = sum(pair.job is job for pair in not_finite)
                answers.extend(self.fail([job], NonFiniteScoresError(count, slot.name)))
        for pair, score in zip(pairs, scores, strict=True):
            job = pair.job
            if not job.state.open:
                continue
            job.scores[pair.position] = score
            job.unscored -= 1
            if job.unscored == 0:
                job.state = JobState.DONE
                answers.jobs.append(job)
                answers.released_prefixes |= self.prefixes.release(job.prefix_id)
        return answers

    def _split_after_oom(
        self, slot: WorkerSlot, pairs: list[QueuedPair], computed_tokens: int
    ) -> tuple[list[list[QueuedPair]], Answers]:
        if len(pairs) == 1:
            logger.warning("oom_pair_failed", tokens=pairs[0].length, device=slot.name)
            return [], self.fail([pairs[0].job], PairTooLargeError(pairs[0].length))
        logger.warning(
            "oom_batch_split", pairs=len(pairs), padded_tokens=computed_tokens, device=slot.name
        )
        half = len(pairs) // 2
        return [pairs[:half], pairs[half:]], Answers()
