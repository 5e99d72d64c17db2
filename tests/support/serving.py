"""The app and the model as the tests serve them: settings, an in-process client, runner
wrappers (test seams on a real runner), reference passes and a fake clock."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from reranker_service.engine.runner.protocol import (
    ModelRunner,
    PassBatch,
    PassPair,
    PassShape,
    PendingScores,
    RunnerKind,
    ServedModel,
    run_pass,
)
from reranker_service.engine.scoring import DeviceMemory, ModelDescription, probability
from reranker_service.settings import Settings

SMALL_MAX_LENGTH = 160


"""Short enough that ordinary test documents are truncated."""


def make_settings(checkpoint: Path, **overrides: Any) -> Settings:
    """Settings serving ``checkpoint`` on the CPU in fp32 (the format the model card's scores
    are matched exactly in), with ``overrides``. The score cache is off unless asked for: the
    tests of the engine send the same pairs again and expect them scored again (the cache's
    own tests, tests/integration/test_score_cache.py, turn it on)."""
    values: dict[str, Any] = {
        "model": str(checkpoint),
        "device": "cpu",
        "dtype": "float32",
        "host": "127.0.0.1",
        "cache_size": 0,
    }
    values.update(overrides)
    return Settings(**values)


def logits(model: ServedModel, sequences: Sequence[Sequence[int]]) -> list[float]:
    """The raw scores of ``sequences`` in one pass of the model's first runner: the reference
    a served score is compared with."""
    return run_pass(model.runner, sequences)


_prefix_ids = itertools.count(-1, -1)


def new_prefix_id() -> int:
    """A prefix id no scheduler gives out (theirs count up from 0)."""
    return next(_prefix_ids)


def prefixed_logits(
    runner: ModelRunner,
    sequences: Sequence[Sequence[int]],
    prefixes: Sequence[tuple[int, int] | None],
    *,
    held: frozenset[int] = frozenset(),
) -> list[float]:
    """One pass in which each sequence starts with its ``(prefix id, length)`` prefix, if any:
    those in ``held`` read from the runner, the others computed in the pass and kept."""
    pairs = [
        PassPair(sequence, *prefix) if prefix is not None else PassPair(sequence)
        for sequence, prefix in zip(sequences, prefixes, strict=True)
    ]
    new = frozenset(prefix[0] for prefix in prefixes if prefix is not None) - held
    return runner.launch(PassBatch(pairs, new)).result()


AppFactory = Callable[..., FastAPI]


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the app in process, with its lifespan running."""
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as http,
    ):
        yield http


def probabilities(logits: Sequence[float]) -> list[float]:
    """P(yes) of each raw score, as the engine answers (a runner's passes give logits)."""
    return [probability(logit) for logit in logits]


def sequences_of(batch: PassBatch) -> list[tuple[int, ...]]:
    return [tuple(pair.tokens) for pair in batch.pairs]


class RunnerWrapper:
    """A served model's real runner behind a test seam: subclasses change ``launch`` only.
    ``served`` is the model served through the wrapper."""

    def __init__(self, model: ServedModel, runner: ModelRunner | None = None) -> None:
        self._runner = runner or model.runner
        self.encoder = model.encoder
        self.served = ServedModel(model.encoder, (self,))

    @property
    def description(self) -> ModelDescription:
        return self._runner.description

    @property
    def kind(self) -> RunnerKind:
        return self._runner.kind

    @property
    def keeps_prefixes(self) -> bool:
        return self._runner.keeps_prefixes

    @property
    def reads_prefixes(self) -> bool:
        return self._runner.reads_prefixes

    @property
    def overlaps_passes(self) -> bool:
        return self._runner.overlaps_passes

    def pass_tokens(self, shape: PassShape) -> int:
        return self._runner.pass_tokens(shape)

    def release(self, prefix_ids: Sequence[int]) -> None:
        self._runner.release(prefix_ids)

    def memory(self) -> DeviceMemory | None:
        return self._runner.memory()

    def bind_thread(self) -> None:
        self._runner.bind_thread()

    def launch(self, batch: PassBatch) -> PendingScores:
        return self._runner.launch(batch)


class PassRecorder(RunnerWrapper):
    """The real runner, remembering the token sequences of each forward pass."""

    def __init__(self, model: ServedModel, runner: ModelRunner | None = None) -> None:
        super().__init__(model, runner)
        self._lock = threading.Lock()
        self.passes: list[list[tuple[int, ...]]] = []

    @property
    def batches(self) -> list[list[int]]:
        """Each pass's pair lengths."""
        return [[len(sequence) for sequence in batch] for batch in self.passes]

    def launch(self, batch: PassBatch) -> PendingScores:
        with self._lock:
            self.passes.append(sequences_of(batch))
        return super().launch(batch)


class GatedModel(RunnerWrapper):
    """The real runner, except that forward passes wait until the test opens the gate."""

    def __init__(self, model: ServedModel, runner: ModelRunner | None = None) -> None:
        super().__init__(model, runner)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        """Set once a forward pass has started (and is perhaps waiting at the gate)."""

    def launch(self, batch: PassBatch) -> PendingScores:
        self.entered.set()
        self.gate.wait(timeout=60)
        return super().launch(batch)


class FakeClock:
    """The scheduler's time in a test: it moves only when the test advances it, so aging,
    priorities and queue waits are exact, with no thread and no sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
