"""Shared prefixes as the scheduler keeps them: their ids, the budget of prefix tokens the
waiting requests hold, and, per worker, which prefixes its runner holds and which it is to let
go. Integers only: what a runner keeps for an id (keys and values) is the runner's."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

_prefix_ids = itertools.count()
"""Prefix ids, unique in the process: a runner that two schedulers share (tests serve one
loaded model from several apps) never takes one scheduler's prefix for the other's."""


@dataclass
class _WorkerPrefixes:
    held: set[int] = field(default_factory=set)
    """Prefix ids its runner keeps: read and written from the worker's own thread only."""
    releases: list[int] = field(default_factory=list)
    """Prefix ids let go since the worker last took work: handed to its runner from its own
    thread, apart from any pass (a launch that raises would take them with it)."""
    serving: bool = True


class PrefixManager:
    """Not thread-safe: the batcher calls it under its lock, except a worker's ``held`` set,
    which only that worker's thread touches (``new_in_pass``, ``kept``, ``drop_held``)."""

    def __init__(self, max_prefix_tokens: int, *, on_device: bool) -> None:
        """``max_prefix_tokens`` bounds the prefix tokens held for the jobs in the queue (0:
        no reuse); it binds only while a runner keeps prefixes on its device (``on_device``)."""
        self.max_prefix_tokens = max_prefix_tokens
        self.on_device = on_device
        self._held_by_jobs: dict[int, int] = {}
        """Prefix id to its tokens, from its job's submission until it has no pair to score."""
        self.tokens_held = 0
        self._workers: dict[str, _WorkerPrefixes] = {}

    def add_worker(self, name: str) -> None:
        self._workers[name] = _WorkerPrefixes()

    def grant(self, prefix_length: int) -> int | None:
        """A new id for a job's prefix of ``prefix_length`` tokens, counted against the budget;
        None when the job is to be scored without reuse (reuse off, or the budget full)."""
        if not prefix_length or not self.max_prefix_tokens:
            return None
        held = self.tokens_held + prefix_length
        if self.on_device and held > self.max_prefix_tokens:
            return None
        prefix_id = next(_prefix_ids)
        self._held_by_jobs[prefix_id] = prefix_length
        self.tokens_held = held
        return prefix_id

    def release(self, prefix_id: int | None) -> bool:
        """Let the prefix go on every worker still serving: its job has no pair left to score.
        Whether it was held (and a worker now has a release to hand its runner)."""
        if prefix_id is None or prefix_id not in self._held_by_jobs:
            return False
        self.tokens_held -= self._held_by_jobs.pop(prefix_id)
        for worker in self._workers.values():
            if worker.serving:  # an ended worker frees nothing more
                worker.releases.append(prefix_id)
        return True

    def has_releases(self, worker: str) -> bool:
        return bool(self._workers[worker].releases)

    def take_releases(self, worker: str) -> list[int]:
        """The worker's pending releases, out of the manager and out of its ``held`` set: the
        worker hands them to its runner before its next launch."""
        state = self._workers[worker]
        released, state.releases = state.releases, []
        state.held.difference_update(released)
        return released

    def new_in_pass(self, worker: str, prefix_ids: Iterable[int]) -> frozenset[int]:
        """Of the prefixes a pass's pairs read, those the worker's runner does not hold: the
        pass computes them."""
        return frozenset(prefix_ids) - self._workers[worker].held

    def kept(self, worker: str, prefix_ids: Iterable[int]) -> None:
        """A pass computing ``prefix_ids`` was launched on a runner that keeps prefixes."""
        self._workers[worker].held.update(prefix_ids)

    def drop_held(self, worker: str) -> Sequence[int]:
        """Everything the worker's runner holds, forgotten (its runner is being replaced)."""
        state = self._workers[worker]
        dropped = sorted(state.held)
        state.held.clear()
        return dropped

    def retire(self, worker: str) -> None:
        """The worker serves no more: no release is queued for it."""
        self._workers[worker].serving = False
