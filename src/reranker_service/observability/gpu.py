"""The GPU poller: NVML memory and utilization per device, plus torch's view of its own devices.

NVML numbers every GPU of the host; torch numbers only those of ``CUDA_VISIBLE_DEVICES``, in its
own order. So the two are paired by UUID, never by index: ``reranker_gpu_info`` names, for each
NVML index, the torch device this process serves on that card.

NVML calls are blocking C calls, so each poll runs on a worker thread; the loop only sleeps
between polls. A machine without an NVIDIA driver is a normal case (CPU serving): the poller
reports ``reranker_nvml_up 0``, says so once, and keeps trying in case the driver appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from reranker_service.engine.scoring import DeviceMemory
from reranker_service.observability.metrics import ServiceMetrics

logger = structlog.get_logger(__name__)


class NvmlLibrary(Protocol):
    """The part of ``pynvml`` (package ``nvidia-ml-py``) the poller uses, named as it names
    them."""

    NVMLError: type[Exception]
    NVMLError_NotSupported: type[Exception]

    def nvmlInit(self) -> None: ...  # noqa: N802
    def nvmlShutdown(self) -> None: ...  # noqa: N802
    def nvmlDeviceGetCount(self) -> int: ...  # noqa: N802
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...  # noqa: N802
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...  # noqa: N802
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...  # noqa: N802
    def nvmlDeviceGetUUID(self, handle: Any) -> str | bytes: ...  # noqa: N802
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...  # noqa: N802


DeviceMemoryReader = Callable[[], Sequence[DeviceMemory]]


def _text(value: str | bytes) -> str:
    """pynvml gives ``str``; releases before 11.5 gave ``bytes``."""
    return value.decode() if isinstance(value, bytes) else value


def load_nvml() -> NvmlLibrary:
    import pynvml

    library: NvmlLibrary = pynvml
    return library


class GpuPoller:
    def __init__(
        self,
        metrics: ServiceMetrics,
        *,
        interval_seconds: float,
        nvml: NvmlLibrary,
        read_device_memory: DeviceMemoryReader | None = None,
        served_gpus: Mapping[str, str] | None = None,
    ) -> None:
        """``served_gpus``: the torch device this process serves on each GPU, by UUID."""
        self._metrics = metrics.gpu
        self._served_gpus = {uuid.lower(): device for uuid, device in (served_gpus or {}).items()}
        self._interval_seconds = interval_seconds
        self._nvml = nvml
        self._read_device_memory = read_device_memory
        self._lock = threading.Lock()  # a poll thread may still run while stop() shuts down
        self._initialized = False
        self._ever_up = False
        self._reported_down = False
        self._gpus_seen: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("GPU poller already started")
        self._task = asyncio.create_task(self._run(), name="reranker-gpu-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await asyncio.to_thread(self._shutdown_nvml)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:  # a broken reading must not end GPU monitoring for good
                logger.exception("gpu_poll_error")
            await asyncio.sleep(self._interval_seconds)

    def poll_once(self) -> bool:
        """Read every GPU once and update the gauges; True when NVML answered."""
        with self._lock:
            nvml_ok = self._poll_nvml()
        self._poll_torch()
        return nvml_ok

    def _poll_nvml(self) -> bool:
        nvml = self._nvml
        try:
            if not self._initialized:
                nvml.nvmlInit()
                self._initialized = True
            readings = [self._read_gpu(index) for index in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            self._mark_down(exc)
            return False
        gpus_now = {reading.gpu for reading in readings}
        for gpu in self._gpus_seen - gpus_now:
            self._metrics.forget_gpu(gpu)
        for reading in readings:
            self._metrics.set_gpu(
                reading.gpu, used_bytes=reading.used_bytes, total_bytes=reading.total_bytes
            )
            if reading.utilization is not None:
                self._metrics.set_gpu_utilization(reading.gpu, reading.utilization)
            self._metrics.set_gpu_info(
                reading.gpu,
                uuid=reading.uuid,
                name=reading.name,
                device=self._served_gpus.get(reading.uuid.lower(), ""),
            )
        self._gpus_seen = gpus_now
        self._metrics.nvml_up.set(1)
        if self._reported_down:
            logger.info("nvml_recovered", gpus=len(readings))
        elif not self._ever_up:
            self._report_served(readings)
        self._ever_up = True
        self._reported_down = False
        return True

    def _read_gpu(self, index: int) -> _GpuReading:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization: float | None
        try:
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
        except nvml.NVMLError_NotSupported:
            utilization = None  # e.g. MIG slices: memory is still worth reporting
        return _GpuReading(
            str(index),
            _text(nvml.nvmlDeviceGetUUID(handle)),
            _text(nvml.nvmlDeviceGetName(handle)),
            int(memory.used),
            int(memory.total),
            utilization,
        )

    def _report_served(self, readings: Sequence[_GpuReading]) -> None:
        """Say once which NVML GPU each served torch device is; a served GPU NVML does not
        list (a MIG slice, another container's driver) has no NVML series to pair with."""
        nvml_index = {reading.uuid.lower(): reading.gpu for reading in readings}
        logger.info(
            "nvml_up",
            gpus=len(readings),
            served={
                device: nvml_index.get(uuid) for uuid, device in sorted(self._served_gpus.items())
            },
        )
        unmatched = sorted(
            device for uuid, device in self._served_gpus.items() if uuid not in nvml_index
        )
        if unmatched:
            logger.warning(
                "served_gpu_not_in_nvml",
                devices=unmatched,
                detail="their NVML memory and utilization cannot be told apart from other GPUs'",
            )

    def _mark_down(self, error: Exception) -> None:
        self._metrics.nvml_up.set(0)
        for gpu in self._gpus_seen:
            self._metrics.forget_gpu(gpu)
        self._gpus_seen = set()
        if self._initialized:
            # Start from a fresh handle next time; the old one may belong to a lost GPU.
            self._shutdown_nvml_locked()
        if self._reported_down:
            return
        self._reported_down = True
        if self._ever_up:
            logger.warning("nvml_poll_failed", error=str(error), error_type=type(error).__name__)
        else:
            logger.warning(
                "nvml_unavailable",
                error=str(error),
                error_type=type(error).__name__,
                detail="GPU metrics are off; serving is not affected. Retrying each poll.",
            )

    def _poll_torch(self) -> None:
        if self._read_device_memory is None:
            return
        for memory in self._read_device_memory():
            self._metrics.set_torch_memory(
                memory.device,
                allocated_bytes=memory.allocated_bytes,
                reserved_bytes=memory.reserved_bytes,
            )

    def _shutdown_nvml(self) -> None:
        with self._lock:
            if self._initialized:
                self._shutdown_nvml_locked()

    def _shutdown_nvml_locked(self) -> None:
        self._initialized = False
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


@dataclass(frozen=True)
class _GpuReading:
    gpu: str
    """NVML's index."""
    uuid: str
    name: str
    used_bytes: int
    total_bytes: int
    utilization: float | None
