"""A sticky device error (an illegal memory access, a device-side assert) fails every later pass
on that GPU, and only a new process serves on it again: the runner tells it from an error of
one pass, the worker stops taking work, requests get a 503 naming it, and ``/health`` and
``/ready`` fail so that the orchestrator restarts the replica. A CPU cannot have one: the
runner's check is held to torch's own error type, and the service to a runner that reports the
loss as the real runners do."""

from __future__ import annotations

import threading
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import torch
from structlog.testing import capture_logs

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import (
    DeviceLostError,
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.engine.runner.readout import raise_device_loss
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.jobs import EngineStoppedError
from tests.support.exposition import scrape
from tests.support.fake_runner import FakeRunner
from tests.support.serving import RunnerWrapper, asgi_client, make_settings

ILLEGAL_ACCESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect."
)
GPU = torch.device("cuda", 0)


def _still_failing(device: torch.device) -> None:
    raise torch.AcceleratorError(ILLEGAL_ACCESS)


def _recovered(device: torch.device) -> None:
    return None


def test_an_error_that_outlives_its_pass_is_a_lost_device() -> None:
    error = torch.AcceleratorError(ILLEGAL_ACCESS)
    with pytest.raises(DeviceLostError) as lost:
        raise_device_loss(error, GPU, synchronize=_still_failing)
    assert str(lost.value) == "cuda:0: CUDA error: an illegal memory access was encountered"


@pytest.mark.parametrize(
    ("error", "device", "synchronize"),
    [
        # The device answers after it: the error was the pass's own.
        (torch.AcceleratorError("CUDA error: invalid argument"), GPU, _recovered),
        # Out of memory is the scheduler's to split, never a lost device.
        (torch.OutOfMemoryError("CUDA out of memory."), GPU, _still_failing),
        # A CPU has no device to lose.
        (RuntimeError("anything"), torch.device("cpu"), _still_failing),
    ],
)
def test_other_errors_are_not_a_lost_device(
    error: Exception, device: torch.device, synchronize: Any
) -> None:
    raise_device_loss(error, device, synchronize=synchronize)


class LosesItsDevice(RunnerWrapper):
    """The real runner, until ``lose`` is set: then every pass fails as a CUDA runner's does
    after a sticky error (``DeviceLostError`` from its launch)."""

    def __init__(self, model: ServedModel, runner: Any = None) -> None:
        super().__init__(model, runner)
        self.lose = threading.Event()

    def launch(self, batch: PassBatch) -> PendingScores:
        if self.lose.is_set():
            raise DeviceLostError(f"{self.description.device}: {ILLEGAL_ACCESS.splitlines()[0]}")
        return super().launch(batch)


BODY = {"query": "q", "documents": ["a", "b"]}


async def test_a_lost_device_fails_its_requests_and_the_health_checks(
    checkpoint: Path, scoring_model: ServedModel
) -> None:
    runner = LosesItsDevice(scoring_model)
    app = create_app(make_settings(checkpoint), model=runner.served)
    with capture_logs() as logs:
        async with asgi_client(app) as http:
            assert (await http.get("/health")).json() == {"status": "ok"}
            runner.lose.set()
            for _ in range(2):  # the failing pass, then a request no worker can take
                failed = await http.post("/rerank", json=BODY)
                assert failed.status_code == 503
                assert failed.json()["error"]["type"] == "device_failed"
                assert "illegal memory access" in failed.json()["error"]["message"]
                assert failed.headers["Retry-After"]
            health = await http.get("/health")
            assert health.status_code == 503
            assert health.json() == {
                "status": "failed",
                "failed_devices": {
                    "cpu": "cpu: CUDA error: an illegal memory access was encountered"
                },
            }
            ready = await http.get("/ready")
            assert (ready.status_code, ready.json()) == (503, {"status": "failed"})
            metrics = await scrape(http)
            assert metrics.value("reranker_request_errors_total", type="internal") == 2
            assert metrics.value("reranker_requests_total", status="fail") == 2
    lost = [entry for entry in logs if entry["event"] == "device_lost"]
    assert [entry["device"] for entry in lost] == ["cpu"]


async def test_the_other_workers_serve_on_while_the_replica_asks_to_be_restarted(
    checkpoint: Path, cpu_replicas: ServedModel
) -> None:
    first = LosesItsDevice(cpu_replicas, cpu_replicas.runners[0])
    served = ServedModel(cpu_replicas.encoder, (first, cpu_replicas.runners[1]))
    app = create_app(make_settings(checkpoint, device="cpu,cpu"), model=served)
    logs: list[MutableMapping[str, Any]]
    with capture_logs() as logs:
        async with asgi_client(app) as http:
            first.lose.set()
            answers: list[int] = []
            while 503 not in answers and len(answers) < 20:  # until the first worker takes one
                answers.append((await http.post("/rerank", json=BODY)).status_code)
            assert answers[-1] == 503, answers
            after = [(await http.post("/rerank", json=BODY)).status_code for _ in range(4)]
            assert after == [200] * 4  # the second worker takes all the work
            assert (await http.get("/health")).status_code == 503
    assert [entry["device"] for entry in logs if entry["event"] == "device_lost"] == ["cpu:0"]


class LostOverlappingRunner(FakeRunner):
    """A GPU-like runner (it launches a pass before the last one's scores are taken) on a
    device already lost: every launch raises as the real runners' do."""

    def __init__(self) -> None:
        super().__init__("cuda:0", overlaps=True)

    def launch(self, batch: PassBatch) -> Any:
        self.batches.append(batch)
        raise DeviceLostError(f"cuda:0: {ILLEGAL_ACCESS.splitlines()[0]}")


async def test_no_pass_is_launched_on_a_device_after_the_launch_that_lost_it() -> None:
    runner = LostOverlappingRunner()
    batcher = Batcher([runner], max_batch_tokens=8, max_queued_pairs=100)
    jobs = [batcher.submit([[index, 1, 2, 3, 4, 5, 6, 7]]) for index in range(4)]  # a pass each
    batcher.start()
    for job in jobs:
        with pytest.raises(DeviceLostError, match="illegal memory access"):
            await job.future
    assert len(runner.batches) == 1  # the queued passes were failed, not launched
    assert list(batcher.lost_devices) == ["cuda:0"]
    # Nothing more runs on the worker: no capture, no runner swap.
    with pytest.raises(EngineStoppedError):
        batcher.run_on_worker("cuda:0", lambda: None).result(timeout=10)
    await batcher.stop()
