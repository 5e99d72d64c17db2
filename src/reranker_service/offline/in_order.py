"""Lines answered concurrently, handed back in input order, with bounded work in flight."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

from reranker_service.offline.batch_lines import Answer, BatchLine


class PairBudget:
    """At most ``capacity`` (query, document) pairs in flight, so that the lines sent never
    overfill the service's queue (which would answer 429s to be waited out). A line larger than
    the whole budget takes all of it, alone."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a pair budget holds at least one pair")
        self.capacity = capacity
        self._free = capacity
        self._changed = asyncio.Condition()

    async def take(self, pairs: int) -> int:
        """Wait until ``pairs`` (at least one, at most the whole budget) are free; take them."""
        share = min(max(pairs, 1), self.capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= share)
            self._free -= share
        return share

    async def give(self, share: int) -> None:
        async with self._changed:
            self._free += share
            self._changed.notify_all()


class Window:
    """How many lines may be in flight: at most ``most``. A service that lets a line wait in
    its queue past its deadline (a 504) has more than it can score in time: the window halves
    then, and grows back by one line each time a window's worth of lines is answered
    (additive increase, multiplicative decrease, as TCP's congestion window)."""

    def __init__(self, most: int) -> None:
        if most < 1:
            raise ValueError("at least one line must be in flight")
        self.most = most
        self.size = most
        self._answered = 0

    def narrow(self) -> None:
        self.size = max(1, self.size // 2)
        self._answered = 0

    def widen(self) -> None:
        if self.size >= self.most:
            return
        self._answered += 1
        if self._answered >= self.size:
            self.size += 1
            self._answered = 0


Send = Callable[[BatchLine], Awaitable[Answer]]


async def _send_within(send: Send, line: BatchLine, budget: PairBudget, share: int) -> Answer:
    try:
        return await send(line)
    finally:
        await budget.give(share)


async def answer_in_order(
    lines: Iterable[BatchLine],
    send: Send,
    *,
    window: Window,
    budget: PairBudget,
    stop: asyncio.Event,
) -> AsyncGenerator[Answer, None]:
    """Each line's answer, in the order of ``lines``, with at most ``window.size`` lines and
    ``budget`` pairs in flight: memory holds those, however long the file. Once ``stop`` is set
    no new line is sent; those in flight are still answered. Closing the iterator early
    cancels the lines in flight."""
    pending: deque[asyncio.Task[Answer]] = deque()
    try:
        for line in lines:
            if stop.is_set():
                break
            while len(pending) >= window.size or (pending and pending[0].done()):
                yield await pending.popleft()
            share = await budget.take(line.pairs)
            pending.append(asyncio.create_task(_send_within(send, line, budget, share)))
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
