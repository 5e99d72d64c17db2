"""The NVML poller against pynvml itself (no driver here) and a fake that fails like pynvml."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pynvml
import pytest
from structlog.testing import capture_logs

from reranker_service.engine.scoring import DeviceMemory
from reranker_service.observability.gpu import DeviceMemoryReader, GpuPoller, load_nvml
from reranker_service.observability.metrics import ServiceMetrics
from tests.support.exposition import Exposition
from tests.support.fake_nvml import FakeGpu, FakeNvml
from tests.support.serving import AppFactory, asgi_client

GIB = 1024**3


def _exposition(metrics: ServiceMetrics) -> Exposition:
    return Exposition.of(metrics.registry)


def _gpu_series(exposition: Exposition, family: str) -> dict[str, float]:
    return {sample.labels["gpu"]: sample.value for sample in exposition.samples(family)}


def _poller(
    nvml: FakeNvml, read_device_memory: DeviceMemoryReader | None = None
) -> tuple[GpuPoller, ServiceMetrics]:
    metrics = ServiceMetrics()
    poller = GpuPoller(
        metrics, interval_seconds=60, nvml=nvml, read_device_memory=read_device_memory
    )
    return poller, metrics


def _events(logs: Sequence[Mapping[str, object]], event: str) -> list[Mapping[str, object]]:
    return [entry for entry in logs if entry["event"] == event]


def test_without_a_driver_nvml_is_down_and_said_once() -> None:
    nvml = load_nvml()
    try:
        nvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        nvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    metrics = ServiceMetrics()
    poller = GpuPoller(metrics, interval_seconds=60, nvml=nvml)
    with capture_logs() as logs:
        assert poller.poll_once() is False
        assert poller.poll_once() is False
    assert _exposition(metrics).value("reranker_nvml_up") == 0
    [warning] = _events(logs, "nvml_unavailable")
    assert warning["log_level"] == "warning"
    assert warning["error_type"] == "NVMLError_LibraryNotFound"


def test_reports_memory_and_utilization_per_gpu() -> None:
    nvml = FakeNvml(
        [FakeGpu(80 * GIB, 30 * GIB, 37), FakeGpu(80 * GIB, 2 * GIB, utilization_percent=None)]
    )
    poller, metrics = _poller(nvml)
    assert poller.poll_once() is True
    exposition = _exposition(metrics)
    assert exposition.value("reranker_nvml_up") == 1
    assert _gpu_series(exposition, "reranker_gpu_memory_used_bytes") == {
        "0": 30 * GIB,
        "1": 2 * GIB,
    }
    assert _gpu_series(exposition, "reranker_gpu_memory_total_bytes") == {
        "0": 80 * GIB,
        "1": 80 * GIB,
    }
    # GPU 1 cannot report utilization; its memory is still reported, and nothing is made up.
    assert _gpu_series(exposition, "reranker_gpu_utilization_ratio") == {"0": pytest.approx(0.37)}


def test_lost_gpu_turns_nvml_down_then_recovers() -> None:
    gpu = FakeGpu(16 * GIB, 4 * GIB, 10)
    nvml = FakeNvml([gpu])
    poller, metrics = _poller(nvml)
    with capture_logs() as logs:
        assert poller.poll_once() is True
        nvml.gpu_lost = True
        assert poller.poll_once() is False
        down = _exposition(metrics)
        assert poller.poll_once() is False
        nvml.gpu_lost = False
        gpu.used_bytes = 5 * GIB
        assert poller.poll_once() is True
    assert down.value("reranker_nvml_up") == 0
    # No stale readings while NVML is down: the series go away.
    assert down.samples("reranker_gpu_memory_used_bytes") == []
    up = _exposition(metrics)
    assert up.value("reranker_nvml_up") == 1
    assert _gpu_series(up, "reranker_gpu_memory_used_bytes") == {"0": 5 * GIB}
    assert len(_events(logs, "nvml_poll_failed")) == 1
    assert len(_events(logs, "nvml_recovered")) == 1
    assert _events(logs, "nvml_unavailable") == []
    # Each failed poll closed NVML and the next one opened it afresh; one session is open now.
    assert nvml.shutdown_calls == nvml.init_calls - 1 == 2


def test_driver_that_appears_later_is_picked_up() -> None:
    nvml = FakeNvml([FakeGpu(24 * GIB, GIB)])
    nvml.driver_loaded = False
    poller, metrics = _poller(nvml)
    with capture_logs() as logs:
        assert poller.poll_once() is False
        assert poller.poll_once() is False
        nvml.driver_loaded = True
        assert poller.poll_once() is True
    assert len(_events(logs, "nvml_unavailable")) == 1
    assert _exposition(metrics).value("reranker_nvml_up") == 1


def test_served_gpus_are_paired_with_nvml_by_uuid_not_by_index() -> None:
    """A host with four GPUs and ``CUDA_VISIBLE_DEVICES=3,1``: torch's cuda:0 is NVML's GPU 3
    and cuda:1 is GPU 1. ``reranker_gpu_info`` says so; GPUs 0 and 2 belong to others."""
    gpus = [FakeGpu(80 * GIB, used * GIB) for used in (70, 10, 50, 20)]
    served = {gpus[3].uuid: "cuda:0", gpus[1].uuid.lower(): "cuda:1"}
    metrics = ServiceMetrics()
    poller = GpuPoller(metrics, interval_seconds=60, nvml=FakeNvml(gpus), served_gpus=served)
    with capture_logs() as logs:
        assert poller.poll_once() is True
    info = {
        sample.labels["gpu"]: sample.labels
        for sample in _exposition(metrics).samples("reranker_gpu_info")
    }
    assert {gpu: labels["device"] for gpu, labels in info.items()} == {
        "0": "",
        "1": "cuda:1",
        "2": "",
        "3": "cuda:0",
    }
    assert all(info[str(index)]["uuid"] == gpu.uuid for index, gpu in enumerate(gpus))
    assert info["3"]["name"] == "NVIDIA H100 80GB HBM3"
    [up] = _events(logs, "nvml_up")
    assert up["served"] == {"cuda:0": "3", "cuda:1": "1"}
    assert not _events(logs, "served_gpu_not_in_nvml")


def test_a_served_gpu_nvml_does_not_list_is_said_once() -> None:
    nvml = FakeNvml([FakeGpu(80 * GIB, GIB)])
    served = {"GPU-00000000-0000-0000-0000-000000000000": "cuda:0"}
    metrics = ServiceMetrics()
    poller = GpuPoller(metrics, interval_seconds=60, nvml=nvml, served_gpus=served)
    with capture_logs() as logs:
        assert poller.poll_once() is True
        assert poller.poll_once() is True
    [warning] = _events(logs, "served_gpu_not_in_nvml")
    assert warning["devices"] == ["cuda:0"]
    [sample] = _exposition(metrics).samples("reranker_gpu_info")
    assert sample.labels["device"] == ""


def test_a_lost_gpu_takes_its_info_series_along() -> None:
    gpus = [FakeGpu(80 * GIB, GIB), FakeGpu(80 * GIB, GIB)]
    nvml = FakeNvml(gpus)
    poller, metrics = _poller(nvml)
    assert poller.poll_once() is True
    assert len(_exposition(metrics).samples("reranker_gpu_info")) == 2
    nvml.gpus = gpus[:1]
    assert poller.poll_once() is True
    assert [s.labels["gpu"] for s in _exposition(metrics).samples("reranker_gpu_info")] == ["0"]


def test_torch_memory_is_reported_even_when_nvml_is_down() -> None:
    nvml = FakeNvml([])
    nvml.driver_loaded = False
    memory = DeviceMemory(device="cuda:0", allocated_bytes=3 * GIB, reserved_bytes=4 * GIB)
    poller, metrics = _poller(nvml, read_device_memory=lambda: [memory])
    poller.poll_once()
    exposition = _exposition(metrics)
    assert exposition.value("reranker_torch_memory_allocated_bytes", device="cuda:0") == 3 * GIB
    assert exposition.value("reranker_torch_memory_reserved_bytes", device="cuda:0") == 4 * GIB


async def test_lifespan_runs_the_poller_and_a_slow_poll_never_blocks_requests(
    app_factory: AppFactory,
) -> None:
    nvml = FakeNvml([FakeGpu(80 * GIB, 10 * GIB, 90)])
    nvml.hold.clear()  # the first poll hangs inside NVML until released
    app = app_factory(nvml=nvml)
    async with asgi_client(app) as http:
        assert await asyncio.to_thread(nvml.holding.wait, 30)
        # NVML is stuck, the service is not.
        assert (
            await http.post("/rerank", json={"query": "q", "documents": ["d"]})
        ).status_code == 200
        nvml.hold.set()
    # Shutting down waits for the poll in progress, then closes NVML.
    exposition = _exposition(app.state.metrics)
    assert exposition.value("reranker_nvml_up") == 1
    assert _gpu_series(exposition, "reranker_gpu_utilization_ratio") == {"0": pytest.approx(0.9)}
    assert nvml.shutdown_calls == 1
