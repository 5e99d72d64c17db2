"""A forward pass as the scheduler keeps it: the queued pairs it carries, what it asks of the
runner, and, once it has finished, one record from which the observer's ``BatchReport`` and
each request's ``PassShare`` are both derived."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from reranker_service.engine.runner.protocol import (
    PassBatch,
    PassPair,
    PassShape,
    PendingScores,
    RunnerKind,
)
from reranker_service.engine.scheduler.jobs import BatchReport, PassShare, ScoringJob


@dataclass(slots=True)
class QueuedPair:
    cost: int
    """Tokens the pair computes: after its request's shared prefix, if one is held."""
    order: int
    tokens: Sequence[int]
    job: ScoringJob
    position: int
    enqueued_at: float
    taken: bool = field(default=False)

    @property
    def length(self) -> int:
        return len(self.tokens)


def distinct_jobs(pairs: Sequence[QueuedPair]) -> list[ScoringJob]:
    return list({id(pair.job): pair.job for pair in pairs}.values())


@dataclass
class Flight:
    """A pass from its launch until its worker has taken its scores."""

    device: str
    pairs: list[QueuedPair]
    new_prefixes: frozenset[int]
    """The prefixes it computes rather than reads from its runner."""
    launched_at: float
    retry: bool
    jobs: list[ScoringJob]
    """The requests its pairs belong to, each once."""
    runner: RunnerKind | None = None
    """The runner it was launched on."""
    pending: PendingScores | None = None
    error: Exception | None = None

    def batch(self) -> PassBatch:
        """What the runner is to compute."""
        pairs = [PassPair(p.tokens, p.job.prefix_id, p.job.prefix_length) for p in self.pairs]
        return PassBatch(pairs, self.new_prefixes)

    def record(
        self,
        pass_tokens: Callable[[PassShape], int],
        started_at: float,
        seconds: float,
        *,
        failed: bool,
    ) -> PassRecord:
        """What the pass did: per request, its pairs and the prefix tokens they did not
        compute (a prefix computed in this pass saves nothing for its first pair), and in all,
        the tokens computed, in the runner's geometry as well."""
        counts = Counter(id(pair.job) for pair in self.pairs)
        parts: dict[int, tuple[int, int]] = {}
        prefix_work = 0
        for job in self.jobs:
            computed = job.prefix_length if job.prefix_id in self.new_prefixes else 0
            count = counts[id(job)]
            parts[id(job)] = (count, count * job.prefix_length - computed)
            prefix_work += computed
        own = [pair.cost for pair in self.pairs]
        shape = PassShape(len(own), max(own), sum(own), prefix_work)
        return PassRecord(
            device=self.device,
            pairs=len(self.pairs),
            real_tokens=shape.tokens + prefix_work,
            computed_tokens=pass_tokens(shape),
            parts=parts,
            # A retried pair's wait was reported with its first pass.
            queue_wait_seconds=()
            if self.retry
            else tuple(self.launched_at - pair.enqueued_at for pair in self.pairs),
            queue_wait_priorities=() if self.retry else tuple(p.job.priority for p in self.pairs),
            started_at=started_at,
            seconds=seconds,
            failed=failed,
            runner=self.runner,
        )


@dataclass(frozen=True)
class PassRecord:
    device: str
    pairs: int
    real_tokens: int
    computed_tokens: int
    parts: dict[int, tuple[int, int]]
    """By ``id(job)``: the request's pairs in the pass, and the prefix tokens they reused."""
    queue_wait_seconds: tuple[float, ...]
    queue_wait_priorities: tuple[int, ...]
    started_at: float
    """When the pass's time began to count: its launch, or the end of the worker's pass before
    it, whichever was later (overlapping passes are each billed the device time after the one
    before them ended)."""
    seconds: float
    failed: bool
    runner: RunnerKind | None = None

    @property
    def reused_tokens(self) -> int:
        return sum(reused for _, reused in self.parts.values())

    def report(self) -> BatchReport:
        return BatchReport(
            pairs=self.pairs,
            real_tokens=self.real_tokens,
            padded_tokens=self.computed_tokens,
            reused_tokens=self.reused_tokens,
            queue_wait_seconds=self.queue_wait_seconds,
            queue_wait_priorities=self.queue_wait_priorities,
            inference_seconds=self.seconds,
            failed=self.failed,
            device=self.device,
            runner=self.runner,
        )

    def share(self, job: ScoringJob) -> PassShare:
        count, reused = self.parts[id(job)]
        return PassShare(
            self.started_at, self.seconds, count, self.pairs, reused, self.device, self.failed
        )
