"""The scheduler's time: one function it is handed rather than reads, so that aging, priorities
and queue waits are tested by advancing a fake clock instead of with threads and sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds on a monotonic scale; only differences between two readings mean anything."""

DEFAULT_CLOCK: Clock = time.perf_counter
"""What the service runs on: the engine times a request's other stages on the same scale."""
