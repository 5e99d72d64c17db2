"""What the HTTP layer needs to know about the service's life: its phase, its models' engines,
and the rerank requests in flight (which a drain waits for)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from reranker_service.engine.model_set import ModelSet
from reranker_service.engine.rerank_engine import RerankEngine

Phase = Literal["loading", "ready", "draining"]


@dataclass
class Lifecycle:
    phase: Phase = "loading"
    models: ModelSet | None = None
    """The served models, once all are loaded and warm."""
    ready_at: float | None = None
    """When they were (Unix seconds)."""
    in_flight: int = 0
    """Rerank requests past admission and not yet answered."""
    _idle: asyncio.Event | None = field(default=None, repr=False)

    @property
    def engine(self) -> RerankEngine | None:
        """The default model's engine (the only one's, with one model served)."""
        return self.models.default.engine if self.models is not None else None

    def begin_draining(self) -> None:
        """Stop taking new work; safe to call from a signal handler."""
        self.phase = "draining"

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """Count a rerank request while it runs; the event loop's thread only."""
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1
            if self.in_flight == 0 and self._idle is not None:
                self._idle.set()

    async def wait_until_idle(self) -> None:
        """Return once no rerank request is being served."""
        while self.in_flight:
            self._idle = asyncio.Event()
            await self._idle.wait()
