"""The queue of waiting pairs, kept in two orders: by the tokens each computes, from which a
batch is a contiguous window, and by arrival within each priority, whose heads are the
candidates for the batch's anchor. The anchor is the first pair by (priority, arrival), lower
priorities first, unless a pair has waited longer than the aging bound: then the oldest such
pair, whatever its priority, so nothing starves. A batch holds pairs of its anchor's priority
or higher only. It reads the time from the clock it is given (the batcher's), so that aging is
tested by advancing a fake one. Not thread-safe: the scheduler calls it under its lock."""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Sequence

from reranker_service.engine.runner.protocol import PassShape
from reranker_service.engine.scheduler.batch_policy import select_window
from reranker_service.engine.scheduler.clock import DEFAULT_CLOCK, Clock
from reranker_service.engine.scheduler.jobs import ScoringJob
from reranker_service.engine.scheduler.passes import QueuedPair


def _sort_key(pair: QueuedPair) -> tuple[int, int]:
    return pair.cost, pair.order


def _arrival(pair: QueuedPair) -> int:
    return pair.order


class _Costs(Sequence[int]):
    """Read-only view of the queue's pair costs; the policy only looks near the anchor."""

    def __init__(self, pairs: list[QueuedPair]) -> None:
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> int:  # type: ignore[override]
        return self._pairs[index].cost


class _Prefixes(Sequence[tuple[int, int] | None]):
    """Read-only view of the queue's pairs' prefixes, ``(prefix id, tokens)``."""

    def __init__(self, pairs: list[QueuedPair]) -> None:
        self._pairs = pairs

    def __len__(self) -> int:
        return len(self._pairs)

    def __getitem__(self, index: int) -> tuple[int, int] | None:  # type: ignore[override]
        job = self._pairs[index].job
        return None if job.prefix_id is None else (job.prefix_id, job.prefix_length)


class PairQueue:
    def __init__(self, max_wait_seconds: float = math.inf, clock: Clock = DEFAULT_CLOCK) -> None:
        """``max_wait_seconds``: the aging bound past which a pair goes first whatever its
        priority, on ``clock``."""
        self.max_wait_seconds = max_wait_seconds
        self._clock = clock
        self._by_length: list[QueuedPair] = []
        self._by_arrival: dict[int, deque[QueuedPair]] = {}
        """Per priority, its pairs in arrival order."""
        self._next_order = 0

    def __len__(self) -> int:
        return len(self._by_length)

    def add(self, job: ScoringJob, sequences: Sequence[Sequence[int]]) -> None:
        """Queue the job's pairs, now; each costs its tokens after the job's prefix."""
        enqueued_at = self._clock()
        for position, tokens in enumerate(sequences):
            pair = QueuedPair(
                len(tokens) - job.prefix_length,
                self._next_order,
                tokens,
                job,
                position,
                enqueued_at,
            )
            self._next_order += 1
            bisect.insort(self._by_length, pair, key=_sort_key)
            self._by_arrival.setdefault(job.priority, deque()).append(pair)

    def jobs(self) -> list[ScoringJob]:
        """The jobs with pairs waiting, each once."""
        return list({id(pair.job): pair.job for pair in self._by_length}.values())

    def remove(self, job: ScoringJob) -> None:
        """Drop the job's waiting pairs."""
        kept = []
        for pair in self._by_length:
            if pair.job is job:
                pair.taken = True
            else:
                kept.append(pair)
        self._by_length = kept
        self._forget_taken_heads()

    def take(
        self,
        max_batch_tokens: int,
        pass_seconds: Callable[[int], float],
        pass_tokens: Callable[[PassShape], int],
        *,
        prefixes_in_every_pass: bool = False,
    ) -> list[QueuedPair]:
        """The next batch (see ``batch_policy``), out of the queue; the queue must not be
        empty. ``prefixes_in_every_pass``: the runner computes each request's prefix in every
        pass with its pairs, which the policy then counts."""
        anchor = self._anchor(self._clock())
        # The pass takes pairs of the anchor's priority or a higher one (a lower value): a
        # high-priority request's pass is not made longer by low-priority neighbours.
        worst = anchor.job.priority
        mixed = max(self._by_arrival) > worst
        eligible = [p for p in self._by_length if p.job.priority <= worst] if mixed else None
        candidates = eligible if eligible is not None else self._by_length
        anchor_index = bisect.bisect_left(candidates, _sort_key(anchor), key=_sort_key)
        start, stop = select_window(
            _Costs(candidates),
            anchor_index,
            max_batch_tokens,
            pass_seconds,
            pass_tokens,
            _Prefixes(candidates) if prefixes_in_every_pass else None,
        )
        batch = candidates[start:stop]
        for pair in batch:
            pair.taken = True
        if eligible is None:
            del self._by_length[start:stop]
        else:
            self._by_length = [pair for pair in self._by_length if not pair.taken]
        self._forget_taken_heads()
        return batch

    def _anchor(self, now: float) -> QueuedPair:
        """The oldest pair past the aging bound, else the first by (priority, arrival)."""
        heads = [waiting[0] for waiting in self._by_arrival.values()]
        oldest = min(heads, key=_arrival)
        if now - oldest.enqueued_at > self.max_wait_seconds:
            return oldest
        return min(heads, key=lambda pair: (pair.job.priority, pair.order))

    def _forget_taken_heads(self) -> None:
        """Keep each priority's head a waiting pair, and release finished pairs' memory."""
        for priority in list(self._by_arrival):
            waiting = self._by_arrival[priority]
            while waiting and waiting[0].taken:
                waiting.popleft()
            if not waiting:
                del self._by_arrival[priority]
