"""``RERANKER_COMPILE=background`` and ``true`` on the CPU, through the app: the replica is
ready on the padded runner at once and exact throughout; the compiled packed runner swaps in
after its self-check, and later passes run on it; a capture that fails, or a self-check that
finds a score off, leaves the padded runner serving and says so in ``/info``, the metrics and
the log; with ``true`` the same failure stops start-up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from structlog.testing import capture_logs

from reranker_service.app import create_app, load_options
from reranker_service.engine.loading import load_model
from reranker_service.engine.runner.build import PackedRunnerUpgrade
from reranker_service.engine.runner.packed import PackedRunner
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scheduler.jobs import BatchReport
from tests.support.compile_seams import (
    CAPTURE_ERROR,
    CudaStandIn,
    PerturbedRunner,
    UpgradeSeam,
    eager_packed,
)
from tests.support.exposition import scrape
from tests.support.model_card import ModelCardReranker
from tests.support.serving import asgi_client, make_settings

MAX_LENGTH = 128
"""One bucket of 128 tokens: one compile, on two cores about a quarter of a minute."""
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", "", "yes"]
TOLERANCE = 1e-5


def _settings(checkpoint: Path, compile_cache: Path, **overrides: Any) -> dict[str, Any]:
    return {
        "compile": "background",
        "max_length": MAX_LENGTH,
        "max_batch_tokens": MAX_LENGTH,
        "compile_cache": str(compile_cache),
        **overrides,
    }


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compile-cache")


@pytest.fixture(scope="module")
def background_model(checkpoint: Path, compile_cache: Path) -> ServedModel:
    settings = make_settings(checkpoint, **_settings(checkpoint, compile_cache))
    return load_model(load_options(settings))


@pytest.fixture(scope="module")
def short_card(checkpoint: Path) -> ModelCardReranker:
    return ModelCardReranker(checkpoint, max_length=MAX_LENGTH)


def _upgrade(model: ServedModel) -> PackedRunnerUpgrade:
    upgrade = model.upgrade_of(0)
    assert isinstance(upgrade, PackedRunnerUpgrade)
    return upgrade


def _with(model: ServedModel, seam: UpgradeSeam) -> ServedModel:
    return ServedModel(model.encoder, model.runners, (seam,))


class _App:
    """The app over a served model, its batch reports kept."""

    def __init__(
        self, checkpoint: Path, compile_cache: Path, model: ServedModel, **overrides: Any
    ) -> None:
        self.reports: list[BatchReport] = []
        settings = make_settings(checkpoint, **_settings(checkpoint, compile_cache, **overrides))
        self.app = create_app(settings, model=model, batch_observer=self.reports.append)

    def engine_waits_for_compiling(self) -> bool:
        engine = self.app.state.lifecycle.engine
        return bool(engine.wait_for_compiled_runners(timeout=600))


async def _raw_scores(http: httpx.AsyncClient) -> list[float]:
    response = await http.post(
        "/rerank", json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
    )
    assert response.status_code == 200, response.text
    results = sorted(response.json()["results"], key=lambda result: result["index"])
    return [result["relevance_score"] for result in results]


def _assert_exact(scores: list[float], card: ModelCardReranker) -> None:
    expected = card.raw_alone(None, QUERY, DOCUMENTS)
    worst = max(abs(a - b) for a, b in zip(scores, expected, strict=True))
    assert worst <= TOLERANCE, f"max abs difference {worst:.2e}"


async def _padded_serves_exactly(
    http: httpx.AsyncClient, served: _App, card: ModelCardReranker, state: str
) -> None:
    """The metrics say the padded runner serves, its compiled successor ``state``; a request
    is scored exactly, on the padded runner."""
    metrics = await scrape(http)
    assert metrics.value(
        "reranker_runner_compile_state", device="cpu", reranker_runner_compile_state=state
    )
    assert metrics.value(
        "reranker_runner_info", device="cpu", runner="padded", compiled="false",
        cuda_graphs="false",
    )  # fmt: skip
    served.reports.clear()
    _assert_exact(await _raw_scores(http), card)
    assert {report.runner.name for report in served.reports if report.runner} == {"padded"}


async def _runner_info(http: httpx.AsyncClient) -> dict[str, Any]:
    """The first device's runner in ``/info``, its unset fields left out."""
    info = (await http.get("/info")).json()
    runner: dict[str, Any] = info["devices"][0]["runner"]
    return {key: value for key, value in runner.items() if value is not None}


@pytest.fixture
def logs() -> Iterator[list[MutableMapping[str, Any]]]:
    with capture_logs() as captured:
        yield captured


@contextlib.asynccontextmanager
async def _opened_on_exit(seam: UpgradeSeam) -> AsyncIterator[None]:
    """Whatever the test finds, the compile thread is let go before the app stops."""
    try:
        yield
    finally:
        seam.gate.set()


def _events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


@pytest.mark.slow
async def test_ready_at_once_exact_throughout_then_the_compiled_runner_serves(
    checkpoint: Path,
    compile_cache: Path,
    background_model: ServedModel,
    short_card: ModelCardReranker,
    logs: list[MutableMapping[str, Any]],
) -> None:
    seam = UpgradeSeam(_upgrade(background_model))
    seam.gate.clear()  # compiling cannot begin until the test has seen the replica serve
    served = _App(checkpoint, compile_cache, _with(background_model, seam))
    async with asgi_client(served.app) as http, _opened_on_exit(seam):
        assert (await http.get("/ready")).status_code == 200
        assert await _runner_info(http) == {
            "name": "padded",
            "compiled": False,
            "cuda_graphs": False,
            "compile_state": "compiling",
            "compile_stage": "build",
        }
        await _padded_serves_exactly(http, served, short_card, "compiling")

        seam.gate.set()
        assert await asyncio.to_thread(served.engine_waits_for_compiling)
        runner = await _runner_info(http)
        assert runner["name"] == "packed"
        assert runner["compiled"] is True
        assert runner["compile_state"] == "compiled"
        assert runner["compile_seconds"] > 0
        metrics = await scrape(http)
        assert metrics.value(
            "reranker_runner_info", device="cpu", runner="packed", compiled="true",
            cuda_graphs="false",
        )  # fmt: skip
        assert [sample.labels["runner"] for sample in metrics.samples("reranker_runner_info")] == [
            "packed"
        ]
        assert metrics.value("reranker_runner_compile_seconds", device="cpu") > 0

        served.reports.clear()
        _assert_exact(await _raw_scores(http), short_card)
        (compiled,) = seam.built
        assert isinstance(compiled, PackedRunner)
        assert {report.runner for report in served.reports} == {compiled.kind}
        assert compiled.kind.compiled
    (swapped,) = _events(logs, "runner_swapped")
    assert swapped["runner"] == "packed"
    assert swapped["compiled"] is True
    (compiled_event,) = _events(logs, "runner_compiled")
    assert compiled_event["self_check_max_difference"] <= TOLERANCE
    assert not _events(logs, "runner_fallback")


async def _assert_fallback(
    served: _App,
    card: ModelCardReranker,
    logs: list[MutableMapping[str, Any]],
    stage: str,
    error: str,
) -> None:
    async with asgi_client(served.app) as http:
        assert (await http.get("/ready")).status_code == 200
        assert await asyncio.to_thread(served.engine_waits_for_compiling)
        runner = await _runner_info(http)
        assert runner["name"] == "padded"
        assert runner["compile_state"] == "fallback"
        assert runner["compile_stage"] == stage
        assert error in runner["compile_error"]
        await _padded_serves_exactly(http, served, card, "fallback")
    (fallback,) = _events(logs, "runner_fallback")
    assert fallback["device"] == "cpu"
    assert fallback["stage"] == stage
    assert error in fallback["error"]
    assert fallback["log_level"] == "warning"
    assert not _events(logs, "runner_swapped")


async def test_a_failed_capture_leaves_the_padded_runner_serving(
    checkpoint: Path,
    compile_cache: Path,
    background_model: ServedModel,
    short_card: ModelCardReranker,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """The packed runner's own capture code, with ``torch.cuda``'s graph API stood in for
    (failing as a capture does); the runner eager, so that nothing is compiled."""
    cuda = CudaStandIn(fail_capture=True)
    seam = UpgradeSeam(
        _upgrade(background_model),
        make=lambda upgrade: eager_packed(upgrade, cuda=cuda, graph_tokens=MAX_LENGTH),
    )
    served = _App(checkpoint, compile_cache, _with(background_model, seam))
    await _assert_fallback(served, short_card, logs, "capture", CAPTURE_ERROR)
    (capture,) = cuda.captures
    assert capture.stream.device == torch.device("cpu")  # the runner's device, not cuda:0
    assert capture.capture_error_mode == "thread_local"
    # The thread is back on its stream, although the failed capture left it on the side one.
    assert cuda.current_stream("cpu") is not capture.stream


def test_each_capture_runs_on_a_side_stream_of_the_runners_device(
    background_model: ServedModel,
) -> None:
    """Named, on the runner's own device, and one for every capture into the runner's pool
    (torch shares a pool's memory between captures on one stream)."""
    cuda = CudaStandIn()
    runner = eager_packed(
        _upgrade(background_model), cuda=cuda, buckets=(128, 256), graph_tokens=256
    )
    serving_stream = cuda.current_stream("cpu")
    for tokens in runner.buckets_to_capture:
        runner.capture(tokens)
    first, second = cuda.captures
    assert first.stream is second.stream
    assert first.stream.device == torch.device("cpu")
    assert first.stream is not serving_stream
    assert first.pool is second.pool
    assert first.capture_error_mode == "thread_local"  # other GPUs' workers serve meanwhile
    # Each starts after the work queued before it, and the work after it waits for it.
    assert first.stream.waited_for == [serving_stream, serving_stream]
    assert serving_stream.waited_for == [first.stream, first.stream]
    assert cuda.current_stream("cpu") is serving_stream
    assert runner.graphed_buckets == (128, 256)
    assert runner.kind.cuda_graphs


async def test_a_self_check_mismatch_leaves_the_padded_runner_serving(
    checkpoint: Path,
    compile_cache: Path,
    background_model: ServedModel,
    short_card: ModelCardReranker,
    logs: list[MutableMapping[str, Any]],
) -> None:
    seam = UpgradeSeam(
        _upgrade(background_model),
        make=lambda upgrade: eager_packed(upgrade, runner_type=PerturbedRunner),
    )
    served = _App(checkpoint, compile_cache, _with(background_model, seam))
    await _assert_fallback(
        served, short_card, logs, "self_check", "differs from the eager runner's"
    )


async def test_with_compile_true_a_failure_stops_start_up(
    checkpoint: Path,
    compile_cache: Path,
    background_model: ServedModel,
    logs: list[MutableMapping[str, Any]],
) -> None:
    """Explicit wins: ``true`` is ready only once compiled, and a failure is not served
    around."""
    seam = UpgradeSeam(
        dataclasses.replace(_upgrade(background_model), foreground=True),
        make=lambda upgrade: eager_packed(upgrade, runner_type=PerturbedRunner),
    )
    served = _App(checkpoint, compile_cache, _with(background_model, seam), compile="true")
    with pytest.raises(Exception, match="failed at self_check"):
        async with asgi_client(served.app):
            pass
    (failed,) = _events(logs, "startup_failed")
    assert "self_check" in failed["error"]


def test_the_stand_in_behaves_as_torch_cuda_graph_does() -> None:
    """The seam's own check: without a stream, every capture shares one default stream made
    on the first device; a failed capture leaves the thread on the capture stream."""
    cuda = CudaStandIn(fail_capture=True)
    before = cuda.current_stream("cuda:1")
    with pytest.raises(RuntimeError), cuda.graph(cuda.CUDAGraph()):
        pass
    assert cuda.captures[0].stream.device.index == 0
    with pytest.raises(RuntimeError), cuda.graph(cuda.CUDAGraph(), stream=cuda.Stream("cuda:1")):
        pass
    assert cuda.current_stream("cuda:1") is not before


async def test_a_torch_without_flex_attention_leaves_the_padded_runner_serving(
    checkpoint: Path,
    compile_cache: Path,
    background_model: ServedModel,
    short_card: ModelCardReranker,
    logs: list[MutableMapping[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GPU host's torch may predate a feature the compiled runner needs: it is detected, and
    the replica serves on as if compiling had failed."""
    from torch.nn.attention import flex_attention

    monkeypatch.delattr(flex_attention, "create_block_mask")
    served = _App(
        checkpoint, compile_cache, _with(background_model, UpgradeSeam(_upgrade(background_model)))
    )
    await _assert_fallback(served, short_card, logs, "build", "flex_attention.create_block_mask")
