"""Host buffers a packed pass's inputs are written into, kept per bucket and reused, so that a
pass neither builds a tensor from Python lists nor page-locks new memory: its stream is written
into the bucket's buffer in place and copied to the device in one transfer (vLLM's input batch
keeps persistent pinned buffers the same way).

On a GPU the copy is asynchronous, and the worker launches the next pass before the last one's
scores are in: each bucket has two buffers used in turn, and a buffer is written again only once
the copy out of it has happened (an event recorded after the copy says so; by then the pass two
launches back has returned its scores, so the wait is a formality).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reranker_service.engine.runner.packing import PackedStream

STAGED_ROWS = 5
"""Token ids, positions, segments, prefix segments, and the readout: each pair's last token
(zeros after the pass's pairs)."""


@dataclass
class _Buffer:
    host: torch.Tensor
    copied: torch.Event | None = None
    """Recorded on the device's stream after the copy out of ``host`` (a GPU only)."""

    def wait_until_copied(self) -> None:
        if self.copied is not None:
            self.copied.synchronize()
            self.copied = None


@dataclass
class _Bucket:
    buffers: list[_Buffer]
    turn: int = 0


class InputStaging:
    """The host side of a packed runner's inputs, per stream length."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._on_gpu = device.type == "cuda"
        self._buckets: dict[int, _Bucket] = {}

    def host_buffer(self, length: int) -> torch.Tensor:
        """The buffer the next pass of ``length`` tokens is written into (for tests and the
        GPU check to read back)."""
        bucket = self._bucket(length)
        return bucket.buffers[bucket.turn].host

    def buffers(self, length: int) -> tuple[torch.Tensor, ...]:
        """Every host buffer kept for streams of ``length`` tokens."""
        return tuple(buffer.host for buffer in self._bucket(length).buffers)

    def to_device(self, stream: PackedStream, into: torch.Tensor | None = None) -> torch.Tensor:
        """``stream`` as a ``[5, T]`` tensor on the device: written into the bucket's next host
        buffer, then copied into ``into`` (a graph's static input) or a new device tensor.
        On the CPU the host buffer itself is the pass's input (the pass has run before the next
        one writes it again)."""
        bucket = self._bucket(stream.length)
        buffer = bucket.buffers[bucket.turn]
        bucket.turn = (bucket.turn + 1) % len(bucket.buffers)
        buffer.wait_until_copied()
        _write(buffer.host, stream)
        if into is not None:
            into.copy_(buffer.host, non_blocking=True)
            staged = into
        else:
            staged = buffer.host.to(self._device, non_blocking=True)
        if self._on_gpu:
            buffer.copied = torch.Event(self._device)
            buffer.copied.record(torch.cuda.current_stream(self._device))
        return staged

    def _bucket(self, length: int) -> _Bucket:
        bucket = self._buckets.get(length)
        if bucket is None:
            count = 2 if self._on_gpu else 1
            bucket = _Bucket(
                [
                    _Buffer(
                        torch.zeros(
                            (STAGED_ROWS, length), dtype=torch.long, pin_memory=self._on_gpu
                        )
                    )
                    for _ in range(count)
                ]
            )
            self._buckets[length] = bucket
        return bucket


def _write(host: torch.Tensor, stream: PackedStream) -> None:
    rows = host.numpy()
    rows[0] = stream.token_ids
    rows[1] = stream.positions
    rows[2] = stream.segments
    rows[3] = stream.prefix_segments
    pairs = len(stream.last_tokens)
    rows[4, :pairs] = stream.last_tokens
    rows[4, pairs:] = 0
