"""The packed runner: a pass is one token stream (see ``packing``), every request's shared prefix
in it once, padded to a token-count bucket; compiled per bucket, and on a GPU the small buckets
replayed from CUDA graphs.

Nothing is kept between passes: a prefix is computed in each pass that scores pairs of its
request, and its pairs attend to it through the mask. Compiled, the mask is a FlexAttention
block mask, whose kernel skips the tiles no query sees; uncompiled, a dense boolean mask through
SDPA (FlexAttention's eager form materialises every score, and its fused kernel exists only
compiled).

Compiling and capturing are separate steps (``compile_buckets``, ``capture``), so that a
replica can compile in the background while it serves on another runner, and capture on its
serving thread between two passes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from reranker_service.engine.runner.compiler import allow_recompiles, cache_reads, isolated
from reranker_service.engine.runner.graphs import CapturedPass, capture_pass
from reranker_service.engine.runner.packing import (
    BLOCK_TOKENS,
    bucket_for,
    pack,
    stream_tokens,
)
from reranker_service.engine.runner.protocol import (
    CompileSummary,
    PassBatch,
    PassShape,
    RunnerKind,
)
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
    guarded_pass,
    to_host,
)
from reranker_service.engine.runner.staging import InputStaging
from reranker_service.engine.scoring import DeviceMemory, ModelDescription

logger = structlog.get_logger(__name__)

_runner_ids = itertools.count()
"""Each runner's compiled functions are its own (see ``compiler.isolated``), named by this."""


@dataclass(frozen=True)
class PackedOptions:
    buckets: tuple[int, ...]
    """Pass sizes in tokens, ascending; a stream is padded up to the smallest that holds it."""
    compiled: bool = False
    """``torch.compile`` the decoder layer and the mask builder, one static graph per bucket."""
    graph_tokens: int = 0
    """Buckets up to this many tokens are replayed from CUDA graphs (a GPU only), once
    captured."""
    flex: bool | None = None
    """FlexAttention (True) or a dense mask through SDPA (False); None: FlexAttention where it
    is fused, compiled."""


def dense_mask(segments: torch.Tensor, prefix_segments: torch.Tensor) -> torch.Tensor:
    """The stream's mask as ``[1, 1, T, T]`` booleans (True: the query row attends to the key
    column)."""
    tokens = torch.arange(segments.shape[0], device=segments.device)
    causal = tokens.unsqueeze(0) <= tokens.unsqueeze(1)
    keys = segments.unsqueeze(0)
    sees = (keys == segments.unsqueeze(1)) | (keys == prefix_segments.unsqueeze(1))
    return (causal & sees).view(1, 1, *causal.shape)


def _eager_create_block_mask(*args: Any, **kwargs: Any) -> Any:
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(*args, **kwargs)


def block_mask(
    segments: torch.Tensor,
    prefix_segments: torch.Tensor,
    create: Callable[..., Any] = _eager_create_block_mask,
) -> Any:
    """The same mask as a FlexAttention ``BlockMask`` over 128-token tiles, made by ``create``
    (``create_block_mask``, or the runner's compiled copy of it)."""

    def sees(batch: Any, head: Any, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        key_segment = segments[key]
        own = key_segment == segments[query]
        return (key <= query) & (own | (key_segment == prefix_segments[query]))

    length = segments.shape[0]
    return create(sees, None, None, length, length, device=segments.device)


@dataclass
class _GraphedBucket:
    """A bucket's pass captured as a CUDA graph, and the static input it reads."""

    captured: CapturedPass
    inputs: torch.Tensor
    """``[5, T]`` on the device: token ids, positions, segments, prefix segments, readout."""


class PackedRunner:
    """The ``ModelRunner`` that packs: the compiled one a GPU serves on."""

    keeps_prefixes = False
    reads_prefixes = True

    def __init__(
        self,
        decoder: PackedDecoder,
        score_direction: torch.Tensor,
        pad_token_id: int,
        description: ModelDescription,
        options: PackedOptions,
        *,
        cuda: Any = None,
    ) -> None:
        """``cuda`` is ``torch.cuda`` unless a test hands in a stand-in with its graph API."""
        if not options.buckets or any(size % BLOCK_TOKENS for size in options.buckets):
            raise ValueError(f"buckets must be whole {BLOCK_TOKENS}-token tiles")
        self._decoder = decoder
        self._score_direction = score_direction
        self._pad_token_id = pad_token_id
        self._description = description
        self._options = options
        self._device = score_direction.device
        self._on_gpu = self._device.type == "cuda"
        self._cuda = cuda if cuda is not None else torch.cuda
        self._flex = options.flex if options.flex is not None else options.compiled
        self._attention: Attention = flex_attention if self._flex else dense_attention
        self._layer: LayerFunction = decoder_layer
        self._create_block_mask: Callable[..., Any] = _eager_create_block_mask
        self.owner = f"{description.device}#{next(_runner_ids)}"
        """Names this runner's compiled functions."""
        self.compiled_functions: tuple[Callable[..., Any], ...] = ()
        """The functions it compiles (its own copies), whose graphs dynamo keeps per bucket."""
        if options.compiled:
            from torch.nn.attention.flex_attention import create_block_mask

            # One static graph per bucket, of functions no other runner compiles: a runner's
            # buckets count against dynamo's recompile limit alone.
            allow_recompiles(len(options.buckets) + 2)
            layer = isolated(decoder_layer, self.owner)
            mask_builder = isolated(create_block_mask, self.owner)
            self.compiled_functions = (layer, mask_builder)
            self._layer = torch.compile(layer, dynamic=False, fullgraph=True)
            self._create_block_mask = torch.compile(mask_builder, dynamic=False)
        self._staging = InputStaging(self._device)
        self._graphs: dict[int, _GraphedBucket] = {}
        self._graph_pool: Any = None
        self._capture_stream: Any = None
        """One side stream of the runner's device for every capture into its pool."""

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def kind(self) -> RunnerKind:
        return RunnerKind("packed", compiled=self._options.compiled, cuda_graphs=bool(self._graphs))

    @property
    def overlaps_passes(self) -> bool:
        return self._on_gpu

    @property
    def options(self) -> PackedOptions:
        return self._options

    @property
    def graphed_buckets(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    @property
    def buckets_to_capture(self) -> tuple[int, ...]:
        """The buckets replayed from graphs once captured, smallest first."""
        return tuple(size for size in self._options.buckets if size <= self._options.graph_tokens)

    @property
    def staging(self) -> InputStaging:
        return self._staging

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

    def compile_buckets(self, should_stop: Callable[[], bool] = lambda: False) -> CompileSummary:
        """Run every bucket once, from the largest, which compiles it where the runner is
        compiled; blocking, from any thread (this runner is not serving yet). Stops early when
        ``should_stop`` says so. Each bucket is logged with its seconds."""
        bucket_seconds = []
        cache_before = cache_reads()
        with torch.inference_mode(), self._on_device():
            for tokens in sorted(self._options.buckets, reverse=True):
                if should_stop():
                    break
                started = time.perf_counter()
                stream = pack(PassBatch.of([[self._pad_token_id] * tokens]), tokens, 0)
                self._forward(self._staging.to_device(stream), 1).cpu()
                seconds = time.perf_counter() - started
                self._log_bucket(tokens, seconds, graphed=False)
                bucket_seconds.append((tokens, seconds))
        cache = cache_reads().since(cache_before)
        return CompileSummary(tuple(bucket_seconds[::-1]), cache.hits, cache.misses)

    def capture(self, tokens: int) -> float:
        """Capture the compiled bucket's pass as a CUDA graph, from the thread that will
        replay it, with no pass of this runner in flight; raises ``GraphCaptureError``."""
        started = time.perf_counter()
        inputs = torch.zeros((5, tokens), dtype=torch.long, device=self._device)
        inputs[2] = torch.arange(tokens, device=self._device)  # every token its own segment
        inputs[3] = -1
        if self._graph_pool is None:
            self._graph_pool = self._cuda.graph_pool_handle()
            self._capture_stream = self._cuda.Stream(self._device)
        with torch.inference_mode(), self._on_device():
            captured = capture_pass(
                self._cuda,
                self._device,
                lambda: self._forward(inputs, tokens),
                self._graph_pool,
                self._capture_stream,
            )
        self._graphs[tokens] = _GraphedBucket(captured, inputs)
        seconds = time.perf_counter() - started
        self._log_bucket(tokens, seconds, graphed=True)
        return seconds

    def prepare(self) -> CompileSummary:
        """Compile every bucket, then capture the graphed ones: blocking, before serving."""
        compiled = self.compile_buckets()
        for tokens in self.buckets_to_capture:
            self.capture(tokens)
        return compiled

    def close(self) -> None:
        """Drop the graphs and their memory pool: the runner will not serve."""
        self._graphs.clear()
        self._graph_pool = self._capture_stream = None
        if self._on_gpu:
            torch.cuda.empty_cache()

    def _log_bucket(self, tokens: int, seconds: float, *, graphed: bool) -> None:
        logger.info(
            "runner_bucket_ready",
            device=self._description.device,
            tokens=tokens,
            seconds=round(seconds, 3),
            compiled=self._options.compiled,
            cuda_graph=graphed,
        )

    def _on_device(self) -> Any:
        return self._cuda.device(self._device) if self._on_gpu else contextlib.nullcontext()

    def launch(self, batch: PassBatch) -> HostScores:
        """Pack the batch, copy the stream to the device and queue its pass (a graph's replay
        where its bucket has one). On a GPU this returns once the pass is queued; on the CPU
        the pass has run."""
        return guarded_pass(self._device, lambda: self._run(batch))

    def _run(self, batch: PassBatch) -> HostScores:
        stream = pack(batch, self._stream_length(stream_tokens(batch)), self._pad_token_id)
        pairs = len(stream.last_tokens)
        graphed = self._graphs.get(stream.length)
        if graphed is not None:
            self._staging.to_device(stream, into=graphed.inputs)
            graphed.captured.graph.replay()
            # The copy to the host is queued behind the replay, before any later
            # replay can overwrite the graph's output.
            return to_host(graphed.captured.output[:pairs], self._device)
        logits = self._forward(self._staging.to_device(stream), pairs)
        return to_host(logits, self._device)

    def _forward(self, inputs: torch.Tensor, pairs: int) -> torch.Tensor:
        """The first ``pairs`` read tokens' logits, fp32, from the ``[5, T]`` inputs on the
        device. A stream past the largest bucket (none within the budget is) runs uncompiled,
        rather than compiling a shape in the middle of serving."""
        token_ids, positions, segments, prefix_segments, last_tokens = inputs
        in_bucket = inputs.shape[1] in self._options.buckets
        compiled = self._options.compiled and in_bucket
        if self._flex:
            create = self._create_block_mask if compiled else _eager_create_block_mask
            mask = block_mask(segments, prefix_segments, create)
        else:
            mask = dense_mask(segments, prefix_segments)
        layer = self._layer if compiled else decoder_layer
        hidden = self._decoder.hidden_states(token_ids, positions, mask, self._attention, layer)
        read = self._decoder.final_hidden(hidden.index_select(0, last_tokens[:pairs]))
        logits: torch.Tensor = read.float() @ self._score_direction
        return logits
