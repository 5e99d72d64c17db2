from __future__ import annotations

import os

# Read by huggingface_hub at import: tests load local checkpoints only and must never wait on
# the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from reranker_service.app import create_app, load_options
from reranker_service.engine.loading import load_model, load_single_device_model
from reranker_service.engine.runner.protocol import (
    ServedModel,
)
from reranker_service.observability.gpu import NvmlLibrary
from reranker_service.tiny_checkpoint import (
    CheckpointKind,
    CheckpointShape,
    build_checkpoint,
    build_kind,
)
from tests.support.model_card import ModelCardReranker
from tests.support.serving import (
    SMALL_MAX_LENGTH,
    AppFactory,
    RunnerWrapper,
    asgi_client,
    make_settings,
)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("qwen3-reranker-tiny"))


@pytest.fixture(scope="session")
def tied_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    shape = CheckpointShape(tie_word_embeddings=True)
    return build_checkpoint(tmp_path_factory.mktemp("qwen3-reranker-tied"), shape, seed=1)


@pytest.fixture(scope="session")
def kind_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[CheckpointKind], Path]:
    """The tiny checkpoint of a kind (``reranker-make-test-model --kind``), built once a
    session when first asked for."""
    built: dict[CheckpointKind, Path] = {}

    def of_kind(kind: CheckpointKind) -> Path:
        if kind not in built:
            built[kind] = build_kind(tmp_path_factory.mktemp(f"tiny-{kind}"), kind)
        return built[kind]

    return of_kind


@pytest.fixture(scope="session")
def scoring_model(checkpoint: Path) -> ServedModel:
    return load_single_device_model(load_options(make_settings(checkpoint)))


@pytest.fixture(scope="session")
def cpu_replicas(checkpoint: Path) -> ServedModel:
    """``RERANKER_DEVICE=cpu,cpu``: two workers' runners, sharing one set of weights."""
    return load_model(load_options(make_settings(checkpoint, device="cpu,cpu")))


@pytest.fixture(scope="session")
def short_scoring_model(checkpoint: Path) -> ServedModel:
    settings = make_settings(checkpoint, max_length=SMALL_MAX_LENGTH)
    return load_single_device_model(load_options(settings))


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


@pytest.fixture
def app_factory(checkpoint: Path, scoring_model: ServedModel) -> AppFactory:
    """``build(model, nvml=..., **settings)``: an app over the session's model (or ``model``, a
    served model or one runner wrapper)."""

    def build(model: Any = None, *, nvml: NvmlLibrary | None = None, **overrides: Any) -> FastAPI:
        if isinstance(model, RunnerWrapper):
            model = model.served
        return create_app(
            make_settings(checkpoint, **overrides), model=model or scoring_model, nvml=nvml
        )

    return build


@pytest.fixture
async def client(app_factory: AppFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(app_factory()) as http:
        yield http
