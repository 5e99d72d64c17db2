from __future__ import annotations

import os

# Read by huggingface_hub at import: tests load local checkpoints only and must never wait on
# the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import contextlib
import shutil
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from reranker_service.app import create_app, load_options
from reranker_service.engine.model import (
    Qwen3ScoringModel,
    load_scoring_model,
    load_scoring_models,
)
from reranker_service.engine.prefix import SharedPrefix
from reranker_service.engine.rerank_engine import probability
from reranker_service.engine.scoring import DeviceMemory
from reranker_service.observability.gpu import NvmlLibrary
from reranker_service.settings import Settings
from reranker_service.tiny_checkpoint import CheckpointShape, build_checkpoint
from tests.model_card import ModelCardReranker

SMALL_MAX_LENGTH = 160
"""Short enough that ordinary test documents are truncated."""


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("qwen3-reranker-tiny"))


@pytest.fixture(scope="session")
def tied_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = CheckpointShape(tie_word_embeddings=True)
    return build_checkpoint(tmp_path_factory.mktemp("qwen3-reranker-tied"), shape, seed=1)


def make_settings(checkpoint: Path, **overrides: Any) -> Settings:
    """Settings serving ``checkpoint`` on the CPU in fp32 (the format the model card's scores
    are matched exactly in), with ``overrides``."""
    values: dict[str, Any] = {
        "model": str(checkpoint),
        "device": "cpu",
        "dtype": "float32",
        "host": "127.0.0.1",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def scoring_model(checkpoint: Path) -> Qwen3ScoringModel:
    return load_scoring_model(load_options(make_settings(checkpoint)))


@pytest.fixture(scope="session")
def cpu_replicas(checkpoint: Path) -> list[Qwen3ScoringModel]:
    """``RERANKER_DEVICE=cpu,cpu``: two workers' replicas, sharing one set of weights."""
    return load_scoring_models(load_options(make_settings(checkpoint, device="cpu,cpu")))


@pytest.fixture(scope="session")
def short_scoring_model(checkpoint: Path) -> Qwen3ScoringModel:
    settings = make_settings(checkpoint, max_length=SMALL_MAX_LENGTH)
    return load_scoring_model(load_options(settings))


@pytest.fixture(scope="session")
def card(checkpoint: Path) -> ModelCardReranker:
    return ModelCardReranker(checkpoint, max_length=8192)


@pytest.fixture(scope="session")
def short_card(checkpoint: Path) -> ModelCardReranker:
    return ModelCardReranker(checkpoint, max_length=SMALL_MAX_LENGTH)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: install Debian's 'prometheus' package (see README)")
    return path


AppFactory = Callable[..., FastAPI]


@pytest.fixture
def app_factory(checkpoint: Path, scoring_model: Qwen3ScoringModel) -> AppFactory:
    """``build(model, nvml=..., **settings)``: an app over the session's model (or ``model``)."""

    def build(model: Any = None, *, nvml: NvmlLibrary | None = None, **overrides: Any) -> FastAPI:
        return create_app(
            make_settings(checkpoint, **overrides), model=model or scoring_model, nvml=nvml
        )

    return build


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


@pytest.fixture
async def client(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app_factory()) as http:
        yield http


def probabilities(logits: Sequence[float]) -> list[float]:
    """P(yes) of each raw score, as the engine answers (``ScoringModel.score`` gives logits)."""
    return [probability(logit) for logit in logits]


class ModelWrapper:
    """The real model behind a test seam: subclasses change ``score`` only."""

    def __init__(self, model: Qwen3ScoringModel) -> None:
        self._model = model
        self.encoder = model.encoder
        self.description = model.description

    def device_memory(self) -> DeviceMemory | None:
        return self._model.device_memory()

    def bind_worker_thread(self) -> None:
        self._model.bind_worker_thread()

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> list[float]:
        return self._model.score(sequences, prefixes)


class PassRecorder(ModelWrapper):
    """The real model, remembering the token sequences of each forward pass."""

    def __init__(self, model: Qwen3ScoringModel) -> None:
        super().__init__(model)
        self._lock = threading.Lock()
        self.passes: list[list[tuple[int, ...]]] = []

    @property
    def batches(self) -> list[list[int]]:
        """Each pass's pair lengths."""
        return [[len(sequence) for sequence in batch] for batch in self.passes]

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> list[float]:
        with self._lock:
            self.passes.append([tuple(sequence) for sequence in sequences])
        return super().score(sequences, prefixes)


class GatedModel(ModelWrapper):
    """The real model, except that forward passes wait until the test opens the gate."""

    def __init__(self, model: Qwen3ScoringModel) -> None:
        super().__init__(model)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        """Set once a forward pass has started (and is perhaps waiting at the gate)."""

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> list[float]:
        self.entered.set()
        self.gate.wait(timeout=60)
        return super().score(sequences, prefixes)
