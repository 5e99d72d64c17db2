"""Which devices serve, in which dtype, on which threads; and the torch release the code needs."""

from __future__ import annotations

import asyncio
import re
import threading
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version
from pydantic import ValidationError

from reranker_service.app import load_options
from reranker_service.engine.devices import resolve_devices, resolve_dtype, worker_names
from reranker_service.engine.loading import load_model
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import (
    ModelRunner,
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.paths import ROOT
from tests.support.serving import RunnerWrapper, make_settings


def test_the_torch_floor_is_the_release_the_tests_run_on() -> None:
    """The code needs torch 2.5 (``torch.OutOfMemoryError``) at least; the floor is the release
    the README's test command installs and the image is built with, so every accepted torch has
    been tested."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_requirement = next(
        Requirement(spec) for spec in project["dependencies"] if spec.startswith("torch")
    )
    floors = [Version(s.version) for s in torch_requirement.specifier if s.operator == ">="]
    readme_pins = set(re.findall(r"torch==([\d.]+)", (ROOT / "README.md").read_text()))
    image_pin = re.search(r"ARG TORCH_VERSION=([\d.]+)", (ROOT / "Dockerfile").read_text())
    assert len(readme_pins) == 1, f"the README pins torch {sorted(readme_pins)}"
    assert image_pin is not None
    assert floors == [Version(readme_pins.pop())] == [Version(image_pin[1])]
    assert floors[0] >= Version("2.5")
    assert Version(torch.__version__.split("+")[0]) >= floors[0]


@pytest.mark.parametrize(
    ("requested", "stored"),
    [("cpu,cpu", "cpu,cpu"), ("cuda:0, cuda:1", "cuda:0,cuda:1"), ("cuda:all", "cuda:all")],
)
def test_device_lists_are_settings(checkpoint: Path, requested: str, stored: str) -> None:
    assert make_settings(checkpoint, device=requested).device == stored


@pytest.mark.parametrize(
    ("requested", "complaint"),
    [
        ("cuda:0,cuda:0", "names a GPU twice"),
        ("cpu,cuda:0", "cannot mix"),
        ("auto,cpu", "comma-separated list"),
        ("cuda:all,cuda:0", "comma-separated list"),
        ("tpu", "comma-separated list"),
    ],
)
def test_device_lists_that_cannot_be_served_are_refused(
    checkpoint: Path, requested: str, complaint: str
) -> None:
    with pytest.raises(ValidationError, match=complaint):
        make_settings(checkpoint, device=requested)


def test_two_cpu_workers_have_distinct_names() -> None:
    devices = resolve_devices("cpu,cpu")
    assert devices == [torch.device("cpu")] * 2
    assert worker_names(devices) == ["cpu:0", "cpu:1"]
    assert worker_names(resolve_devices("cpu")) == ["cpu"]


def test_cpu_replicas_share_one_set_of_weights(checkpoint: Path) -> None:
    replicas = load_model(load_options(make_settings(checkpoint, device="cpu,cpu")))
    runners = [runner for runner in replicas.runners if isinstance(runner, PaddedRunner)]
    assert [runner.description.device for runner in runners] == ["cpu:0", "cpu:1"]
    weights = [next(runner._backbone.parameters()) for runner in runners]
    assert weights[0].data_ptr() == weights[1].data_ptr()


class _Capabilities:
    """``torch.cuda.get_device_capability`` of a host with a Turing card (7.5, no bf16) as GPU 0
    and a Hopper (9.0) as GPU 1; like torch's, an index past the GPUs fails."""

    def __init__(self) -> None:
        self.by_index = [(7, 5), (9, 0)]

    def __call__(self, device: torch.device | str | int | None = None) -> tuple[int, int]:
        if device is None:
            raise AssertionError("the current device is not the one asked about")
        index = device if isinstance(device, int) else torch.device(device).index
        if index is None or not 0 <= index < len(self.by_index):
            raise AssertionError("Invalid device id")
        return self.by_index[index]


def test_auto_dtype_asks_the_served_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", _Capabilities())
    hopper, turing = torch.device("cuda", 1), torch.device("cuda", 0)
    assert resolve_dtype("auto", [hopper]) == torch.bfloat16
    assert resolve_dtype("auto", [turing]) == torch.float16
    # One dtype for every worker, so that no score depends on which worker took the pair.
    assert resolve_dtype("auto", [hopper, turing]) == torch.float16
    assert resolve_dtype("auto", [torch.device("cpu")]) == torch.float32
    assert resolve_dtype("bfloat16", [turing]) == torch.bfloat16


class ThreadRecorder(RunnerWrapper):
    """The real model, noting the thread that bound itself to it and those that ran its passes
    once one had (a replica's start-up warm-up runs before the workers exist)."""

    def __init__(self, model: ServedModel, runner: ModelRunner) -> None:
        super().__init__(model, runner)
        self.bound_threads: list[int] = []
        self.pass_threads: set[int] = set()

    def bind_thread(self) -> None:
        self.bound_threads.append(threading.get_ident())
        super().bind_thread()

    def launch(self, batch: PassBatch) -> PendingScores:
        if self.bound_threads:
            self.pass_threads.add(threading.get_ident())
        return super().launch(batch)


async def test_each_worker_thread_binds_to_its_device_before_its_passes(
    checkpoint: Path,
) -> None:
    """On a GPU the binding sets the thread's current device to the replica's: without it, a
    worker serving cuda:1 would run what takes the current device on cuda:0."""
    replicas = load_model(load_options(make_settings(checkpoint, device="cpu,cpu")))
    recorders = [ThreadRecorder(replicas, runner) for runner in replicas.runners]
    served = ServedModel(replicas.encoder, tuple(recorders))
    engine = RerankEngine(served, EngineConfig(2048, 1000, 100, 1, pass_costs=((64, 1e-3),)))
    await engine.start()
    try:
        await asyncio.gather(
            *(engine.rerank(DEFAULT_INSTRUCTION, f"query {n}", ["a", "b"]) for n in range(8))
        )
    finally:
        await engine.stop()
    bound = [recorder.bound_threads for recorder in recorders]
    assert all(len(threads) == 1 for threads in bound)
    assert bound[0] != bound[1], "two workers bound on one thread"
    assert any(recorder.pass_threads for recorder in recorders)
    for recorder in recorders:
        assert recorder.pass_threads <= set(recorder.bound_threads)
