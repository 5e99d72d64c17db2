"""The event loop the offline commands run on: the server's."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed, as uvicorn serves on it: the engine's
    worker threads hand every pass's scores to the loop, and uvloop's cross-thread wake-ups
    cost a fraction of asyncio's (bench/batch_bench.py: +40 % pairs/s in process on the test
    checkpoint). Elsewhere, asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
