"""The GPU families of the metric catalog: what NVML says of each GPU (memory, utilisation,
identity) and what torch's allocator holds on each served one. Written by the NVML poller
(``observability.gpu``) only."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge


class GpuMetrics:
    """``reranker_gpu_*``, ``reranker_nvml_up`` and ``reranker_torch_memory_*_bytes``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.gpu_memory_used = Gauge(
            "reranker_gpu_memory_used_bytes",
            "GPU memory in use, all processes (NVML)",
            ["gpu"],
            registry=registry,
        )
        self.gpu_memory_total = Gauge(
            "reranker_gpu_memory_total_bytes", "GPU memory installed (NVML)", ["gpu"],
            registry=registry,
        )  # fmt: skip
        self.gpu_utilization = Gauge(
            "reranker_gpu_utilization_ratio",
            "Share of the last sample period in which a kernel ran on the GPU (NVML), 0-1",
            ["gpu"],
            registry=registry,
        )
        self.nvml_up = Gauge(
            "reranker_nvml_up", "1 if the last NVML poll worked, 0 otherwise", registry=registry
        )
        self.torch_memory_allocated = Gauge(
            "reranker_torch_memory_allocated_bytes",
            "Device memory held by live tensors of this process (torch.cuda)",
            ["device"],
            registry=registry,
        )
        self.torch_memory_reserved = Gauge(
            "reranker_torch_memory_reserved_bytes",
            "Device memory held by this process's caching allocator (torch.cuda)",
            ["device"],
            registry=registry,
        )
        self.gpu_info = Gauge(
            "reranker_gpu_info",
            "Each GPU NVML sees (gpu is NVML's index), its UUID and name, and the torch device "
            "this process serves on it (device, empty if none); always 1",
            ["gpu", "uuid", "name", "device"],
            registry=registry,
        )
        self._gpu_info_labels: dict[str, tuple[str, str, str, str]] = {}

    def set_gpu(self, gpu: str, *, used_bytes: int, total_bytes: int) -> None:
        self.gpu_memory_used.labels(gpu=gpu).set(used_bytes)
        self.gpu_memory_total.labels(gpu=gpu).set(total_bytes)

    def set_gpu_info(self, gpu: str, *, uuid: str, name: str, device: str) -> None:
        labels = (gpu, uuid, name, device)
        if self._gpu_info_labels.get(gpu) not in (None, labels):
            self.gpu_info.remove(*self._gpu_info_labels[gpu])
        self._gpu_info_labels[gpu] = labels
        self.gpu_info.labels(*labels).set(1)

    def set_gpu_utilization(self, gpu: str, ratio: float) -> None:
        self.gpu_utilization.labels(gpu=gpu).set(ratio)

    def forget_gpu(self, gpu: str) -> None:
        """Drop a GPU's series, so that a dead NVML leaves gaps rather than stale values."""
        for family in (self.gpu_memory_used, self.gpu_memory_total, self.gpu_utilization):
            family.remove(gpu)
        info = self._gpu_info_labels.pop(gpu, None)
        if info is not None:
            self.gpu_info.remove(*info)

    def set_torch_memory(self, device: str, *, allocated_bytes: int, reserved_bytes: int) -> None:
        self.torch_memory_allocated.labels(device=device).set(allocated_bytes)
        self.torch_memory_reserved.labels(device=device).set(reserved_bytes)
