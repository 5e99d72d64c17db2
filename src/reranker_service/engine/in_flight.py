"""Pairs being scored now, by their score-cache key: a request that misses the cache for a pair
another request is computing waits for that computation instead of queueing the pair again.

Under concurrency the score cache alone misses what it is about to hold: sixteen clients
replaying a workload send a repeated pair while its first computation is still queued, and
each copy would be scored. Here the first request to miss a pair owns its computation; the
others share its result. A share is never lost with its owner: a request that is cancelled
(its client hung up) or fails lets its pairs go, and the requests that were waiting for them
compute them themselves.

Everything here runs on the engine's event loop; nothing needs a lock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field


class OwnerGoneError(Exception):
    """The request computing a pair ended without its score (cancelled, or failed)."""


@dataclass
class Claim:
    """A request's pairs missed by the cache, split by who computes them."""

    owned: list[int] = field(default_factory=list)
    """Indices (into the request's pairs) this request computes."""
    shared: dict[int, asyncio.Future[float]] = field(default_factory=dict)
    """Indices another request (or this one, for a pair it repeats) is computing."""
    unclaimed: list[int] = field(default_factory=list)
    """Indices this request computes although another request is computing them too (at a
    later priority)."""

    @property
    def computed_here(self) -> list[int]:
        """Indices this request's own passes score."""
        return sorted(self.owned + self.unclaimed)


@dataclass(frozen=True)
class _Computation:
    score: asyncio.Future[float]
    priority: int
    """The owner's (lower goes first)."""


class InFlightScores:
    def __init__(self) -> None:
        self._pending: dict[bytes, _Computation] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def claim(self, keys: Sequence[bytes], missing: Sequence[int], priority: int = 0) -> Claim:
        """For each missing pair (``keys[index]``): join a computation on its way, or own a
        new one. A key repeated within the request is owned once. A computation owned at a
        later priority than ``priority`` is not joined (the request would wait behind the work
        it is meant to overtake): the pair is computed again, unclaimed."""
        loop = asyncio.get_running_loop()
        claim = Claim()
        for index in missing:
            key = keys[index]
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = _Computation(loop.create_future(), priority)
                claim.owned.append(index)
            elif pending.priority <= priority:
                claim.shared[index] = pending.score
            else:
                claim.unclaimed.append(index)
        return claim

    @contextmanager
    def owning(self, keys: Sequence[bytes], owned: Sequence[int]) -> Iterator[None]:
        """While the owner computes ``owned`` (and stores it in the cache, when the block
        covers that too): on leaving, the keys are let go, and any score not ``settle``d by
        then fails its waiters with ``OwnerGoneError``, who compute it themselves."""
        try:
            yield
        finally:
            for index in owned:
                pending = self._pending.pop(keys[index], None)
                future = pending.score if pending is not None else None
                if future is not None and not future.done():
                    future.set_exception(OwnerGoneError())
                    future.exception()  # retrieved: no "never retrieved" warning if unshared

    def settle(self, keys: Sequence[bytes], scores: dict[int, float]) -> None:
        """The owner's scores, to its waiters at once (the keys stay claimed until the
        ``owning`` block ends, so that a request arriving meanwhile joins rather than
        computes)."""
        for index, score in scores.items():
            pending = self._pending.get(keys[index])
            if pending is not None and not pending.score.done():
                pending.score.set_result(score)


async def shared_scores(claim: Claim) -> tuple[dict[int, float], list[int]]:
    """Wait for the shared pairs' scores: those that came, and the indices whose owner went
    without them. A waiter that is cancelled does not cancel the computation it waited for."""
    if not claim.shared:
        return {}, []
    await asyncio.wait(set(claim.shared.values()))
    scores: dict[int, float] = {}
    lost: list[int] = []
    for index, future in claim.shared.items():
        if future.cancelled() or future.exception() is not None:
            lost.append(index)
        else:
            scores[index] = future.result()
    return scores, lost
