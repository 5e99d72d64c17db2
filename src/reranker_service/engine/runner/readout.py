"""What every runner does once its logits exist: refuse non-numbers, copy the scores to the
host without waiting for the device, and report the device's memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reranker_service.engine.scoring import DeviceMemory


@dataclass
class HostScores:
    """A launched pass's scores, copied to host memory when ``ready`` is reached."""

    scores: torch.Tensor
    ready: torch.Event | None

    def result(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        scores: list[float] = self.scores.tolist()
        return scores


def to_host(logits: torch.Tensor, device: torch.device) -> HostScores:
    """``logits`` (fp32, one per pair) as the pass's one device-to-host transfer; on a GPU,
    without waiting for it. An overflowed pass (fp16 can) has an infinite or NaN logit, whose
    sigmoid would look like a score (1.0); it comes out as NaN, which the scheduler refuses to
    answer with."""
    scores = torch.where(torch.isfinite(logits), logits, torch.nan)
    if device.type != "cuda":
        return HostScores(scores, None)
    host = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
    host.copy_(scores, non_blocking=True)
    ready = torch.Event(device)
    # On this GPU's stream, named: a thread whose current device is another GPU (the start-up
    # warm-up's) would otherwise record it on that GPU's.
    ready.record(torch.cuda.current_stream(device))
    return HostScores(host, ready)


def device_memory(device: torch.device) -> DeviceMemory | None:
    """torch's allocator on ``device``; None on the CPU."""
    if device.type != "cuda":
        return None
    return DeviceMemory(
        device=str(device),
        allocated_bytes=torch.cuda.memory_allocated(device),
        reserved_bytes=torch.cuda.memory_reserved(device),
    )


def bind_thread(device: torch.device) -> None:
    """Make the calling thread's current GPU ``device``: kernels that take the current device
    rather than their tensors' (and ``torch.cuda`` calls without a device) would otherwise run
    on ``cuda:0``."""
    if device.type == "cuda":
        torch.cuda.set_device(device)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
