"""What the HTTP layer needs to know about the service's life: phase and engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from reranker_service.engine.service import RerankEngine

Phase = Literal["loading", "ready", "draining"]


@dataclass
class ServiceState:
    phase: Phase = "loading"
    engine: RerankEngine | None = None

    def begin_draining(self) -> None:
        """Stop taking new work; safe to call from a signal handler."""
        self.phase = "draining"
