"""What every runner does once its logits exist: refuse non-numbers, copy the scores to the
host without waiting for the device, tell a lost device from a failed pass, and report the
device's memory."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from reranker_service.engine.runner.protocol import BatchTooLargeError, DeviceLostError
from reranker_service.engine.scoring import DeviceMemory


@dataclass
class HostScores:
    """A launched pass's scores, copied to host memory when ``ready`` is reached."""

    scores: torch.Tensor
    ready: torch.Event | None
    device: torch.device | None = None

    def result(self) -> list[float]:
        if self.ready is not None:
            try:
                self.ready.synchronize()
            except Exception as exc:
                if self.device is not None:
                    raise_device_loss(exc, self.device)
                raise
        scores: list[float] = self.scores.tolist()
        return scores


def _synchronize(device: torch.device) -> None:
    torch.cuda.synchronize(device)


def raise_device_loss(
    error: BaseException,
    device: torch.device,
    synchronize: Callable[[torch.device], None] = _synchronize,
) -> None:
    """Raise ``DeviceLostError`` if ``error``, raised by a pass on ``device``, left the GPU
    unusable: a sticky CUDA error (an illegal memory access, a device-side assert) fails every
    later call into the device, so one more (``synchronize``) tells it from an error of this
    pass alone. Returns for any other error, and always on the CPU."""
    if device.type != "cuda" or isinstance(error, torch.OutOfMemoryError):
        return
    try:
        synchronize(device)
    except Exception as again:
        raise DeviceLostError(f"{device}: {first_line(error)}") from again


def guarded_pass(device: torch.device, run: Callable[[], HostScores]) -> HostScores:
    """``run``'s pass, under inference mode, its failures told apart: out of device memory it
    raises ``BatchTooLargeError`` (a smaller pass may fit), on a device that serves nothing more
    ``DeviceLostError``, anything else as it came."""
    try:
        with torch.inference_mode():
            return run()
    except torch.OutOfMemoryError as exc:
        # The traceback's frames hold the failed pass's activations: clear them, and let the
        # error go with this block, before the cache is freed and a retry may come.
        message = first_line(exc)
        traceback.clear_frames(exc.__traceback__)
    except Exception as exc:
        raise_device_loss(exc, device)
        raise
    if device.type == "cuda":
        torch.cuda.empty_cache()
    raise BatchTooLargeError(message)


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
    return HostScores(host, ready, device)


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
