"""How long a call takes, for the benchmark's probes: one helper, so that every probe warms up
and averages the same way."""

from __future__ import annotations

import time
from collections.abc import Callable


def ms_per_call(call: Callable[[], object], repeats: int, warm_ups: int = 1) -> float:
    """Milliseconds per call of ``call``, averaged over ``repeats`` calls after ``warm_ups``
    untimed ones (first-call setup: allocations, oneDNN's primitive cache, compiling)."""
    for _ in range(warm_ups):
        call()
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) * 1000 / repeats
