"""A circuit breaker for a score store across the network.

Without one, a Redis that is stuck, or whose host is gone, costs every request the cache's
timeout before it is scored as a miss. With one, a few calls in a row fail, then the store is
not asked at all for a back-off period (its lookups and writes miss at once, as a failure
would), then one call probes it: an answer closes the breaker, a failure opens it again for
twice as long, up to a cap.

Time is the ``clock`` argument, so that the state machine is tested by advancing a fake one.
Used from the event loop only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import structlog

logger = structlog.get_logger(__name__)

FAILURES_TO_OPEN: Final = 3
"""Failures in a row that open the breaker. One timeout is noise (a slow command, a pause on
either side); three in a row mean the store is down or stuck. Until they have happened, at most
three requests have paid a timeout (60 ms at the default 20 ms)."""
FIRST_BACKOFF_SECONDS: Final = 1.0
"""How long the breaker stays open the first time: a Redis back after a restart is used again
within a second, and a dead one costs a request one timeout per second at most."""
MAX_BACKOFF_SECONDS: Final = 30.0
"""The cap of the back-off, which doubles with each failed probe: a long outage costs one
request one timeout every 30 s, and a Redis that comes back is found within 30 s."""
BACKOFF_GROWTH: Final = 2.0
LOG_SECONDS: Final = 60.0
"""At most one ``cache_breaker_opened`` line in this long (a flapping store would write one a
second), as the store's own ``cache_unavailable`` line."""


@dataclass(frozen=True)
class BreakerPolicy:
    failures_to_open: int = FAILURES_TO_OPEN
    first_backoff_seconds: float = FIRST_BACKOFF_SECONDS
    max_backoff_seconds: float = MAX_BACKOFF_SECONDS

    def __post_init__(self) -> None:
        if self.failures_to_open < 1:
            raise ValueError("a breaker opens after one failure at least")
        if not 0 < self.first_backoff_seconds <= self.max_backoff_seconds:
            raise ValueError("the first back-off must be positive and at most the cap")


BREAKER_POLICY: Final = BreakerPolicy()


class BreakerState(StrEnum):
    CLOSED = "closed"
    """Calls go through; failures in a row are counted."""
    OPEN = "open"
    """Calls are refused until the back-off ends."""
    HALF_OPEN = "half_open"
    """One call, the probe, went through; the others are refused until it ends."""


def _ignore(is_open: bool) -> None:
    return None


@dataclass(frozen=True, eq=False)
class Call:
    """A call the breaker let through; its result is reported with it, so that while the
    breaker is half-open only the probe's result decides, not a call made before it opened."""

    probe: bool


class CircuitBreaker:
    """Ask ``allow()`` before a call; report how it ended with ``succeeded()``, ``failed()`` or
    ``abandoned()``. ``on_open_change`` hears ``True`` when the breaker opens after working,
    ``False`` when it closes again (not the probes in between: it is open throughout)."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy = BREAKER_POLICY,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_open_change: Callable[[bool], None] = _ignore,
    ) -> None:
        self._name = name
        self._policy = policy
        self._clock = clock
        self._on_open_change = on_open_change
        self._state = BreakerState.CLOSED
        self._failures_in_a_row = 0
        self._backoff_seconds = policy.first_backoff_seconds
        self._probe_at = 0.0
        self._probe: Call | None = None
        self._opened_at = 0.0
        self._refused = 0
        """Calls refused since it opened."""
        self._openings_unlogged = 0
        self._logged_at: float | None = None
        self._opening_logged = False
        """Whether the current opening was logged: then its closing is too."""

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> Call | None:
        """The call to make, or None: always while closed; once the back-off has ended, to one
        call, the probe; otherwise not (the call is counted as refused)."""
        if self._state is BreakerState.CLOSED:
            return Call(probe=False)
        if self._state is BreakerState.OPEN and self._clock() >= self._probe_at:
            self._state = BreakerState.HALF_OPEN
            self._probe = Call(probe=True)
            return self._probe
        self._refused += 1
        return None

    def _decides(self, call: Call | None) -> bool:
        """Whether a half-open breaker takes this result: the probe's (or, reported without
        its call, the one call that went out)."""
        return self._state is BreakerState.HALF_OPEN and (call is None or call is self._probe)

    def succeeded(self, call: Call | None = None) -> None:
        """The store answered. While open, the answer is to a call made before it opened, and
        while half-open only the probe decides, not a straggler."""
        if self._state is BreakerState.CLOSED:
            self._failures_in_a_row = 0
        elif self._decides(call):
            self._close()

    def failed(self, call: Call | None = None) -> None:
        """The store failed or timed out."""
        if self._state is BreakerState.CLOSED:
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self._policy.failures_to_open:
                self._open()
        elif self._decides(call):
            self._backoff_seconds = min(
                self._backoff_seconds * BACKOFF_GROWTH, self._policy.max_backoff_seconds
            )
            self._state = BreakerState.OPEN
            self._probe_at = self._clock() + self._backoff_seconds

    def abandoned(self, call: Call | None = None) -> None:
        """A call ended with neither (its request was cancelled). Were it the probe, the
        breaker would wait for its end forever: the next call probes instead."""
        if self._decides(call):
            self._state = BreakerState.OPEN
            self._probe_at = self._clock()

    def _open(self) -> None:
        now = self._clock()
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._probe_at = now + self._backoff_seconds
        self._refused = 0
        self._on_open_change(True)
        self._openings_unlogged += 1
        if self._logged_at is None or now - self._logged_at >= LOG_SECONDS:
            logger.warning(
                "cache_breaker_opened",
                backend=self._name,
                failures=self._failures_in_a_row,
                probe_in_seconds=self._backoff_seconds,
                openings=self._openings_unlogged,
                detail="lookups and writes skip it, as misses, until a probe gets an answer",
            )
            self._logged_at, self._openings_unlogged = now, 0
            self._opening_logged = True

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._failures_in_a_row = 0
        self._backoff_seconds = self._policy.first_backoff_seconds
        self._on_open_change(False)
        if self._opening_logged:
            logger.info(
                "cache_breaker_closed",
                backend=self._name,
                open_seconds=round(self._clock() - self._opened_at, 3),
                skipped=self._refused,
            )
            self._opening_logged = False
