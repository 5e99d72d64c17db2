"""Capturing a pass as a CUDA graph on the runner's own GPU.

``torch.cuda.graph`` without a ``stream`` captures on a stream it creates once per process, on
whichever GPU was current at the first capture: a second GPU's captures would then run on the
first one's stream and fail. And a capture that fails inside ``torch.cuda.graph`` leaves the
thread on the capture stream. So each capture here names a side stream of the runner's device,
and the thread's stream is put back whatever happens.

The capture is thread-local (``capture_error_mode="thread_local"``): the workers of other GPUs
keep serving while one GPU captures, and the default global mode would forbid their allocations
for the capture's length.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

WARM_UP_RUNS = 2
"""Runs on the side stream before capturing: the first ones allocate, and may tune kernels."""


class GraphCaptureError(Exception):
    """A bucket's pass could not be captured; the message is its first line."""


@dataclass
class CapturedPass:
    graph: Any
    """``torch.cuda.CUDAGraph``: ``replay()`` runs the captured pass again."""
    output: torch.Tensor
    """Written by each replay."""


def capture_pass(
    cuda: Any,
    device: torch.device,
    forward: Callable[[], torch.Tensor],
    pool: Any,
    side: Any,
) -> CapturedPass:
    """Capture ``forward`` (which reads and writes only static tensors) as a graph in ``pool``,
    on ``side``, a stream of ``device`` (the same one for every capture into ``pool``, so that
    the captures share its memory). ``cuda`` is ``torch.cuda`` (the tests hand in a stand-in
    with the same API, since a CPU has no graphs)."""
    previous = cuda.current_stream(device)
    try:
        side.wait_stream(previous)
        with cuda.stream(side):
            for _ in range(WARM_UP_RUNS):
                forward()
        previous.wait_stream(side)
        graph = cuda.CUDAGraph()
        with cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            output = forward()
    except Exception as exc:
        text = str(exc).strip() or type(exc).__name__
        raise GraphCaptureError(text.splitlines()[0]) from exc
    finally:
        # A capture that failed in ``torch.cuda.graph`` leaves the thread on ``side``.
        cuda.set_stream(previous)
    return CapturedPass(graph, output)
