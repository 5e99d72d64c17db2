"""A stand-in for pynvml on a machine with no NVIDIA driver.

It has pynvml's function names and signatures, returns pynvml's own ctypes structs (and ``str``
for UUIDs and names, as pynvml 11.5 and later do), numbers every GPU of the host as NVML does
(whatever ``CUDA_VISIBLE_DEVICES`` shows torch), and fails
the way pynvml fails: by raising pynvml's ``NVMLError`` subclasses (``Uninitialized`` before
``nvmlInit``, ``GPUIsLost`` for a GPU that fell off the bus, ``NotSupported`` for a reading the
device cannot give, ``DriverNotLoaded`` when there is no driver).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

import pynvml


@dataclass
class FakeGpu:
    total_bytes: int
    used_bytes: int
    utilization_percent: int | None = 50
    """None: the device does not support utilization readings (MIG slices, some vGPUs)."""
    uuid: str = field(default_factory=lambda: f"GPU-{uuid.uuid4()}")
    """As the driver gives it: ``GPU-`` and 32 hex digits in 8-4-4-4-12 groups."""
    name: str = "NVIDIA H100 80GB HBM3"


@dataclass(frozen=True)
class _Handle:
    index: int


class FakeNvml:
    NVMLError = pynvml.NVMLError
    NVMLError_NotSupported = pynvml.NVMLError_NotSupported

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.driver_loaded = True
        self.gpu_lost = False
        self.init_calls = 0
        self.shutdown_calls = 0
        self.count_calls = 0
        self.hold = threading.Event()
        """Cleared: the next ``nvmlDeviceGetCount`` blocks until it is set again."""
        self.hold.set()
        self.holding = threading.Event()
        self._initialized = False

    def _check(self) -> None:
        if not self._initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if self.gpu_lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def nvmlInit(self) -> None:  # noqa: N802
        self.init_calls += 1
        if not self.driver_loaded:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
        self._initialized = True

    def nvmlShutdown(self) -> None:  # noqa: N802
        if not self._initialized:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        self.shutdown_calls += 1
        self._initialized = False

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        self.count_calls += 1
        if not self.hold.is_set():
            self.holding.set()
            self.hold.wait(timeout=60)
        self._check()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:  # noqa: N802
        self._check()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> pynvml.c_nvmlMemory_t:  # noqa: N802
        self._check()
        gpu = self.gpus[handle.index]
        return pynvml.c_nvmlMemory_t(
            total=gpu.total_bytes, free=gpu.total_bytes - gpu.used_bytes, used=gpu.used_bytes
        )

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:  # noqa: N802
        self._check()
        return self.gpus[handle.index].uuid

    def nvmlDeviceGetName(self, handle: _Handle) -> str:  # noqa: N802
        self._check()
        return self.gpus[handle.index].name

    def nvmlDeviceGetUtilizationRates(  # noqa: N802
        self, handle: _Handle
    ) -> pynvml.c_nvmlUtilization_t:
        self._check()
        gpu = self.gpus[handle.index]
        if gpu.utilization_percent is None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlUtilization_t(gpu=gpu.utilization_percent, memory=0)
