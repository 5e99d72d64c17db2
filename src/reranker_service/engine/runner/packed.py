"""The packed runner: a pass is one token stream (see ``packing``), every request's shared prefix
in it once, padded to a token-count bucket; compiled per bucket, and on a GPU the small buckets
replayed from CUDA graphs.

Nothing is kept between passes: a prefix is computed in each pass that scores pairs of its
request, and its pairs attend to it through the mask. On a GPU the mask is a FlexAttention
block mask, whose kernel skips the tiles no query sees; on the CPU without compiling, a dense
boolean mask through SDPA (FlexAttention's eager form materialises every score).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from reranker_service.engine.runner.packing import (
    BLOCK_TOKENS,
    PackedStream,
    bucket_for,
    pack,
    stream_tokens,
)
from reranker_service.engine.runner.protocol import BatchTooLargeError, PassBatch, PassShape
from reranker_service.engine.runner.qwen3_decoder import (
    Attention,
    LayerFunction,
    PackedDecoder,
    decoder_layer,
    dense_attention,
    flex_attention,
)
from reranker_service.engine.runner.readout import (
    HostScores,
    bind_thread,
    device_memory,
    first_line,
    to_host,
)
from reranker_service.engine.scoring import DeviceMemory, ModelDescription

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PackedOptions:
    buckets: tuple[int, ...]
    """Pass sizes in tokens, ascending; a stream is padded up to the smallest that holds it."""
    compiled: bool = False
    """``torch.compile`` the decoder layer, one static graph per bucket."""
    graph_tokens: int = 0
    """Buckets up to this many tokens are replayed from CUDA graphs (a GPU only)."""
    flex: bool | None = None
    """FlexAttention (True) or a dense mask through SDPA (False); None: FlexAttention where it
    is fused, on a GPU or compiled."""


def dense_mask(segments: torch.Tensor, prefix_segments: torch.Tensor) -> torch.Tensor:
    """The stream's mask as ``[1, 1, T, T]`` booleans (True: the query row attends to the key
    column)."""
    tokens = torch.arange(segments.shape[0], device=segments.device)
    causal = tokens.unsqueeze(0) <= tokens.unsqueeze(1)
    keys = segments.unsqueeze(0)
    sees = (keys == segments.unsqueeze(1)) | (keys == prefix_segments.unsqueeze(1))
    return (causal & sees).view(1, 1, *causal.shape)


def block_mask(segments: torch.Tensor, prefix_segments: torch.Tensor, *, compiled: bool) -> Any:
    """The same mask as a FlexAttention ``BlockMask`` over 128-token tiles."""
    from torch.nn.attention.flex_attention import create_block_mask

    def sees(batch: Any, head: Any, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        key_segment = segments[key]
        own = key_segment == segments[query]
        return (key <= query) & (own | (key_segment == prefix_segments[query]))

    length = segments.shape[0]
    create = _compiled_create_block_mask() if compiled else create_block_mask
    return create(sees, None, None, length, length, device=segments.device)


@functools.cache
def _compiled_create_block_mask() -> Any:
    """``create_block_mask`` compiled: its tiles computed without materialising the mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask)


@dataclass
class _GraphedBucket:
    """A bucket's pass captured as a CUDA graph, and the buffers it reads and writes."""

    graph: Any
    stream: torch.Tensor
    """``[4, T]``: token ids, positions, segments, prefix segments."""
    last_tokens: torch.Tensor
    """``[T]``: the stream index each score is read at (the first pairs' only)."""
    logits: torch.Tensor


class PackedRunner:
    """The ``ModelRunner`` that packs: the default on a GPU."""

    keeps_prefixes = False

    def __init__(
        self,
        decoder: PackedDecoder,
        score_direction: torch.Tensor,
        pad_token_id: int,
        description: ModelDescription,
        options: PackedOptions,
    ) -> None:
        if not options.buckets or any(size % BLOCK_TOKENS for size in options.buckets):
            raise ValueError(f"buckets must be whole {BLOCK_TOKENS}-token tiles")
        self._decoder = decoder
        self._score_direction = score_direction
        self._pad_token_id = pad_token_id
        self._description = description
        self._options = options
        self._device = score_direction.device
        self._on_gpu = self._device.type == "cuda"
        self._flex = options.flex if options.flex is not None else self._on_gpu or options.compiled
        # FlexAttention is fused only when compiled: inside the compiled layer, or on a GPU
        # without one, compiled alone (its eager form computes every score of the stream).
        self._fused = self._flex and (options.compiled or self._on_gpu)
        self._attention: Attention = flex_attention if self._flex else dense_attention
        self._layer: LayerFunction = decoder_layer
        if self._fused:
            _allow_recompiles(len(options.buckets))
        if options.compiled:
            self._layer = torch.compile(decoder_layer, dynamic=False, fullgraph=True)
        elif self._fused:
            self._attention = torch.compile(flex_attention, dynamic=False, fullgraph=True)
        self._graphs: dict[int, _GraphedBucket] = {}
        self._graph_pool: Any = None

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def overlaps_passes(self) -> bool:
        return self._on_gpu

    @property
    def options(self) -> PackedOptions:
        return self._options

    @property
    def graphed_buckets(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def pass_tokens(self, shape: PassShape) -> int:
        return self._stream_length(shape.tokens + shape.prefix_tokens)

    def release(self, prefix_ids: Sequence[int]) -> None:
        """Nothing is kept between passes."""

    def memory(self) -> DeviceMemory | None:
        return device_memory(self._device)

    def bind_thread(self) -> None:
        bind_thread(self._device)

    def _stream_length(self, tokens: int) -> int:
        """The bucket of a stream of ``tokens``; past the largest, whole tiles (run eagerly)."""
        bucket = bucket_for(tokens, self._options.buckets)
        return bucket if bucket is not None else math.ceil(tokens / BLOCK_TOKENS) * BLOCK_TOKENS

    def prepare(self) -> list[tuple[int, float, bool]]:
        """Run every bucket once, from the largest (which compiles it, where compiled), and
        capture the graphed ones; blocking, before serving. Returns ``(tokens, seconds,
        graphed)`` per bucket and logs each."""
        ready = []
        on_device = torch.cuda.device(self._device) if self._on_gpu else contextlib.nullcontext()
        with torch.inference_mode(), on_device:
            for tokens in sorted(self._options.buckets, reverse=True):
                started = time.perf_counter()
                stream = pack(PassBatch.of([[self._pad_token_id] * tokens]), tokens, 0)
                self._forward(self._stream_tensors(stream), self._readout(stream)).cpu()
                graphed = False
                if self._on_gpu and tokens <= self._options.graph_tokens:
                    graphed = self._capture(tokens)
                seconds = time.perf_counter() - started
                logger.info(
                    "runner_bucket_ready",
                    device=self._description.device,
                    tokens=tokens,
                    seconds=round(seconds, 3),
                    compiled=self._options.compiled,
                    cuda_graph=graphed,
                )
                ready.append((tokens, seconds, graphed))
        return ready[::-1]

    def launch(self, batch: PassBatch) -> HostScores:
        """Pack the batch, copy the stream to the device and queue its pass (a graph's replay
        where its bucket has one). On a GPU this returns once the pass is queued; on the CPU
        the pass has run."""
        try:
            with torch.inference_mode():
                stream = pack(batch, self._stream_length(stream_tokens(batch)), self._pad_token_id)
                graphed = self._graphs.get(stream.length)
                if graphed is not None:
                    return self._replay(graphed, stream)
                logits = self._forward(self._stream_tensors(stream), self._readout(stream))
                return to_host(logits, self._device)
        except torch.OutOfMemoryError as exc:
            # As the padded runner: the traceback holds the failed pass's activations.
            message = first_line(exc)
            traceback.clear_frames(exc.__traceback__)
        if self._on_gpu:
            torch.cuda.empty_cache()
        raise BatchTooLargeError(message)

    def _host_tensor(self, rows: list[list[int]]) -> torch.Tensor:
        host = torch.tensor(rows, dtype=torch.long)
        return host.pin_memory() if self._on_gpu else host

    def _stream_host(self, stream: PackedStream) -> torch.Tensor:
        """The stream as one ``[4, T]`` host tensor: one copy to the device per pass."""
        return self._host_tensor(
            [stream.token_ids, stream.positions, stream.segments, stream.prefix_segments]
        )

    def _stream_tensors(self, stream: PackedStream) -> torch.Tensor:
        return self._stream_host(stream).to(self._device, non_blocking=True)

    def _readout(self, stream: PackedStream) -> torch.Tensor:
        host = self._host_tensor([stream.last_tokens])[0]
        return host.to(self._device, non_blocking=True)

    def _forward(self, stream: torch.Tensor, last_tokens: torch.Tensor) -> torch.Tensor:
        """Each read token's logit, fp32, from the ``[4, T]`` stream on the device. A stream
        past the largest bucket (none within the budget is) runs uncompiled, rather than
        compiling a shape in the middle of serving."""
        token_ids, positions, segments, prefix_segments = stream
        in_bucket = stream.shape[1] in self._options.buckets
        if self._flex:
            fused = self._fused and in_bucket
            mask = block_mask(segments, prefix_segments, compiled=fused)
            attention = self._attention if fused else flex_attention
        else:
            mask, attention = dense_mask(segments, prefix_segments), self._attention
        layer = self._layer if in_bucket else decoder_layer
        hidden = self._decoder.hidden_states(token_ids, positions, mask, attention, layer)
        read = self._decoder.final_hidden(hidden.index_select(0, last_tokens))
        logits: torch.Tensor = read.float() @ self._score_direction
        return logits

    def _capture(self, tokens: int) -> bool:
        """Capture the bucket's pass as a CUDA graph; a bucket that cannot be captured runs
        as before, and says why once."""
        stream = torch.zeros((4, tokens), dtype=torch.long, device=self._device)
        stream[2] = torch.arange(tokens, device=self._device)
        stream[3] = -1
        last_tokens = torch.zeros(tokens, dtype=torch.long, device=self._device)
        try:
            side = torch.cuda.Stream(self._device)  # type: ignore[no-untyped-call]
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(stream, last_tokens)
            torch.cuda.current_stream(self._device).wait_stream(side)
            if self._graph_pool is None:
                self._graph_pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._graph_pool):
                logits = self._forward(stream, last_tokens)
        except Exception as exc:
            logger.warning(
                "cuda_graph_capture_failed",
                device=self._description.device,
                tokens=tokens,
                error=first_line(exc),
            )
            return False
        self._graphs[tokens] = _GraphedBucket(graph, stream, last_tokens, logits)
        return True

    def _replay(self, graphed: _GraphedBucket, stream: PackedStream) -> HostScores:
        pairs = len(stream.last_tokens)
        last_tokens = stream.last_tokens + [0] * (graphed.last_tokens.shape[0] - pairs)
        graphed.stream.copy_(self._stream_host(stream), non_blocking=True)
        graphed.last_tokens.copy_(self._host_tensor([last_tokens])[0], non_blocking=True)
        graphed.graph.replay()
        # The copy to the host is queued behind the replay, before any later replay can
        # overwrite the graph's output.
        return to_host(graphed.logits[:pairs], self._device)


def _allow_recompiles(buckets: int) -> None:
    """Dynamo recompiles a function for each new static shape, and gives up (runs it eagerly)
    past its limit: every bucket, and its block mask, must get its graph."""
    import torch._dynamo.config as dynamo_config

    wanted = 2 * buckets + 8
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, wanted)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * wanted
    )
