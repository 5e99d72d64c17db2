"""Which devices serve, under which names, and in which number format."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reranker_service.engine.scoring import ModelLoadError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The formats a decoder is loaded in as they are; ``auto`` is chosen after loading (see
``resolve_dtype`` and the loader's CPU precision)."""


def _cuda_device(requested: str) -> torch.device:
    """A CUDA device with its index: every report of it (model info, torch memory) names it
    the same way."""
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
    device = torch.device(requested)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
        )
    return torch.device("cuda", index)


def resolve_devices(requested: str) -> list[torch.device]:
    """The devices of ``RERANKER_DEVICE`` (validated by the settings), one per worker: ``auto``
    is the current GPU or else the CPU, ``cuda:all`` every GPU torch sees (those of
    ``CUDA_VISIBLE_DEVICES``), and a list its entries."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda:all":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda:all' requested but CUDA is not available")
        return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    devices = [
        torch.device("cpu") if entry == "cpu" else _cuda_device(entry)
        for entry in requested.split(",")
    ]
    gpus = [device for device in devices if device.type == "cuda"]
    if len(set(gpus)) != len(gpus):
        raise ModelLoadError(f"device {requested!r} names one GPU twice; one worker per GPU")
    return devices


def resolve_device(requested: str) -> torch.device:
    """The one device of a single-device ``requested``."""
    devices = resolve_devices(requested)
    if len(devices) != 1:
        raise ModelLoadError(f"device {requested!r} names {len(devices)} devices, not one")
    return devices[0]


def worker_names(devices: Sequence[torch.device]) -> list[str]:
    """Each worker's name, distinct: a GPU's is its device (``cuda:1``); the CPU's is ``cpu``,
    or ``cpu:0``, ``cpu:1`` ... when several workers share it."""
    if sum(device.type == "cpu" for device in devices) <= 1:
        return [str(device) for device in devices]
    return [f"cpu:{index}" for index in range(len(devices))]


def _bf16_native(device: torch.device) -> bool:
    """Whether the GPU computes bf16 in hardware (compute capability 8.0, Ampere, or later):
    asked of ``device`` itself, not of the thread's current GPU."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_dtype(requested: str, devices: Sequence[torch.device]) -> torch.dtype:
    """One dtype for every worker, so that a pair's score does not depend on which one took
    it: ``auto`` is bf16 where every GPU computes it natively, else fp16; on the CPU fp32, which
    the loader's CPU precision check may then turn into bf16."""
    if requested != "auto":
        return DTYPES[requested]
    gpus = [device for device in devices if device.type == "cuda"]
    if not gpus:
        return torch.float32
    return torch.bfloat16 if all(_bf16_native(device) for device in gpus) else torch.float16


def device_uuid(device: torch.device) -> str | None:
    """The GPU's UUID in NVML's spelling (``GPU-`` and the hex digits); None on the CPU."""
    if device.type != "cuda":
        return None
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
