"""What the engine needs of a scoring model. ``model.py`` holds the Qwen3 implementation; tests
and benchmarks wrap it through the same protocol."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from reranker_service.engine.prefix import SharedPrefix
from reranker_service.engine.prompt import PromptEncoder


class PairScorer(Protocol):
    def score(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> list[float]:
        """The raw score of each token sequence, logit(yes) - logit(no) (its sigmoid is P(yes)),
        in one forward pass. A sequence whose ``prefixes``
        entry is set starts with that prefix's tokens, which the scorer may compute once (and
        keep in the prefix's ``state``) instead of once per sequence; the scores are the same."""
        ...


class PendingScores(Protocol):
    def result(self) -> list[float]:
        """Wait for the pass and return its scores."""
        ...


@dataclass(frozen=True)
class ReadyScores:
    """The scores of a pass that already ran."""

    scores: list[float]

    def result(self) -> list[float]:
        return self.scores


@runtime_checkable
class PassLauncher(Protocol):
    def launch(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> PendingScores:
        """Start ``score``'s pass and return without waiting for the device to finish it.
        Passes run in launch order; a prefix state set by one is usable by the next."""
        ...


@dataclass(frozen=True)
class ModelDescription:
    """What one worker serves. ``device`` is the worker's name, distinct per worker: ``cuda:1``,
    or ``cpu``; several CPU workers are ``cpu:0``, ``cpu:1``."""

    model: str
    revision: str
    device: str
    dtype: str
    max_length: int
    load_seconds: float
    device_uuid: str | None = None
    """The GPU's UUID as the driver reports it (``GPU-...``), which NVML also gives: torch and
    NVML number GPUs differently, the UUID names one card for both. None on the CPU."""

    @property
    def device_type(self) -> str:
        """``cuda`` or ``cpu``: what the engine's defaults depend on."""
        return self.device.partition(":")[0]


@dataclass(frozen=True)
class DeviceMemory:
    """torch's caching allocator on the served device."""

    device: str
    allocated_bytes: int
    reserved_bytes: int


class ScoringModel(PairScorer, Protocol):
    """A loaded model: its prompt encoder, what it is, and its device's memory."""

    @property
    def encoder(self) -> PromptEncoder: ...

    @property
    def description(self) -> ModelDescription: ...

    def device_memory(self) -> DeviceMemory | None:
        """torch's allocator on the served GPU; None when serving on the CPU."""
        ...

    def bind_worker_thread(self) -> None:
        """Make the calling thread, which will run every pass, work on this model's device."""
        ...
