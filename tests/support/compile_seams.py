"""Seams for the compiled runner's way in: a stand-in for ``torch.cuda``'s stream and graph API
(a CPU has no streams or graphs), an upgrade whose runner the test makes and whose start it
holds, and a runner whose scores are off."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from reranker_service.engine.runner.build import PackedRunnerUpgrade
from reranker_service.engine.runner.packed import PackedOptions, PackedRunner
from reranker_service.engine.runner.protocol import (
    CompilableRunner,
    ModelRunner,
    PassBatch,
)
from reranker_service.engine.runner.readout import HostScores

CAPTURE_ERROR = "CUDA error: operation not permitted when stream is capturing"
"""What ``torch.cuda.graph`` raises when a captured pass does something a graph cannot hold."""


class StandInStream:
    """A ``torch.cuda.Stream``: it belongs to one device."""

    def __init__(self, device: torch.device | str | None) -> None:
        self.device = torch.device(device if device is not None else "cuda:0")
        self.waited_for: list[StandInStream] = []

    def wait_stream(self, stream: StandInStream) -> None:
        self.waited_for.append(stream)

    def __repr__(self) -> str:
        return f"<StandInStream {self.device} {id(self):x}>"


class StandInGraph:
    """A ``torch.cuda.CUDAGraph``; a stand-in cannot replay what it did not record."""

    def replay(self) -> None:
        raise NotImplementedError("a stand-in graph records no kernels to replay")


@dataclass
class Capture:
    stream: StandInStream
    pool: Any
    capture_error_mode: str


class CudaStandIn:
    """``torch.cuda``'s stream and graph calls as the packed runner makes them, with their
    semantics where a test can see them: a current stream per device, ``stream()`` switching
    it for a block, and ``graph()`` capturing on the stream it is given, or else on one default
    stream made once, on the current device (``cuda:0``), for every later capture, and leaving
    the thread on the capture stream when the capture fails (``torch.cuda.graph`` does not
    switch back when ``capture_end`` raises)."""

    def __init__(self, fail_capture: bool = False) -> None:
        self.fail_capture = fail_capture
        self.captures: list[Capture] = []
        self._current: dict[torch.device, StandInStream] = {}
        self._default_capture_stream: StandInStream | None = None

    def current_stream(self, device: torch.device | str | None = None) -> StandInStream:
        key = torch.device(device if device is not None else "cuda:0")
        return self._current.setdefault(key, StandInStream(key))

    def Stream(self, device: torch.device | str | None = None) -> StandInStream:  # noqa: N802
        return StandInStream(device)

    def set_stream(self, stream: StandInStream) -> None:
        self._current[stream.device] = stream

    @contextlib.contextmanager
    def stream(self, stream: StandInStream) -> Iterator[None]:
        previous = self.current_stream(stream.device)
        self.set_stream(stream)
        try:
            yield
        finally:
            self.set_stream(previous)

    @contextlib.contextmanager
    def device(self, device: torch.device) -> Iterator[None]:
        yield

    def graph_pool_handle(self) -> tuple[int, int]:
        return (0, len(self.captures))

    def CUDAGraph(self) -> StandInGraph:  # noqa: N802
        return StandInGraph()

    @contextlib.contextmanager
    def graph(
        self,
        cuda_graph: StandInGraph,
        pool: Any = None,
        stream: StandInStream | None = None,
        capture_error_mode: str = "global",
    ) -> Iterator[None]:
        if stream is None:
            if self._default_capture_stream is None:
                self._default_capture_stream = StandInStream("cuda:0")
            stream = self._default_capture_stream
        self.captures.append(Capture(stream, pool, capture_error_mode))
        self.set_stream(stream)
        yield
        if self.fail_capture:
            raise RuntimeError(CAPTURE_ERROR)  # the thread stays on ``stream``, as in torch
        self.set_stream(self.current_stream(stream.device))


class PerturbedRunner(PackedRunner):
    """The packed runner, its every score off by ``offset`` (a logit): a compiled runner gone
    wrong, as a self-check must catch it."""

    offset = 0.5

    def launch(self, batch: PassBatch) -> HostScores:
        scores = super().launch(batch).result()
        return HostScores(torch.tensor([score + self.offset for score in scores]), None)


def eager_packed(
    upgrade: PackedRunnerUpgrade,
    runner_type: type[PackedRunner] = PackedRunner,
    cuda: Any = None,
    **options: Any,
) -> PackedRunner:
    """The upgrade's packed runner uncompiled (no compile time in a test), with ``options``
    changed; ``cuda``: a stand-in for ``torch.cuda``."""
    return runner_type(
        upgrade.decoder,
        upgrade.score_direction,
        upgrade.pad_token_id,
        upgrade.description,
        PackedOptions(**{**vars(upgrade.options), "compiled": False, **options}),
        cuda=cuda,
    )


def _opened() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class UpgradeSeam:
    """A real ``RunnerUpgrade`` whose compiled runner ``make`` builds (the real one by
    default), once ``gate`` is open (it is, unless the test closes it)."""

    upgrade: PackedRunnerUpgrade
    make: Callable[[PackedRunnerUpgrade], CompilableRunner] | None = None
    gate: threading.Event = field(default_factory=_opened)
    built: list[CompilableRunner] = field(default_factory=list)
    foreground_override: bool | None = None

    @property
    def foreground(self) -> bool:
        if self.foreground_override is not None:
            return self.foreground_override
        return self.upgrade.foreground

    @property
    def probe(self) -> Sequence[PassBatch]:
        return self.upgrade.probe

    @property
    def score_bound(self) -> float:
        return self.upgrade.score_bound

    def build(self) -> CompilableRunner:
        if not self.gate.wait(timeout=120):
            raise TimeoutError("the test never opened the compile gate")
        runner = self.make(self.upgrade) if self.make is not None else self.upgrade.build()
        self.built.append(runner)
        return runner

    def reference(self) -> ModelRunner:
        return self.upgrade.reference()
