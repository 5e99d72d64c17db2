"""The rerank engine as the HTTP layer sees it: tokenize off the loop, batch, score.

Importing this module does not import torch; the model arrives already loaded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from reranker_service.engine.batcher import Batcher, BatchObserver
from reranker_service.engine.calibration import measure_pass_overhead
from reranker_service.engine.prefix import SharedPrefix, shared_prefix
from reranker_service.engine.scoring import DeviceMemory, ModelDescription, ScoringModel

logger = structlog.get_logger(__name__)

# Padded tokens per forward pass when the operator sets no budget: a GPU needs big batches to be
# busy; a CPU gains little from them. The fixed cost of a pass is measured at start-up; these
# are only the fallbacks for when that measurement is noise.
_DEFAULT_BATCH_TOKENS = {"cuda": 32768, "cpu": 8192}
_FALLBACK_PASS_OVERHEAD_TOKENS = {"cuda": 2048, "cpu": 64}
# Pairs that may wait when the operator sets no limit: several full-size requests in flight.
_QUEUED_REQUESTS = 4
_MIN_QUEUED_PAIRS = 4096

_WARM_UP_DOCUMENTS = ("warm-up", "a longer warm-up document " * 8)


@dataclass(frozen=True)
class EngineConfig:
    """What the operator asked for; ``None`` leaves the choice to the engine."""

    max_batch_tokens: int | None
    max_queued_pairs: int | None
    largest_request_pairs: int
    """The most pairs one request may bring: the queue must hold at least that many."""
    tokenizer_threads: int
    prefix_reuse: bool = True
    """Compute each request's shared prompt prefix once. Its keys and values are held while the
    request has pairs waiting, for at most ``max_batch_tokens`` prefix tokens at a time."""
    pass_overhead_tokens: int | None = None
    """A forward pass's fixed cost in token-equivalents, for the batch policy; None: measured at
    start-up. Pinned, two engines batch alike (the benchmark compares them so)."""


@dataclass(frozen=True)
class RerankOutcome:
    scores: list[float]
    """One score per document, in request order."""
    pair_tokens: list[int]
    """Tokens fed to the model for each pair: prompt-wrapped and truncated."""
    tokenize_seconds: float
    queue_seconds: float
    inference_seconds: float
    engine_seconds: float
    """Wall time in the engine, from the call until the scores were back on the caller's event
    loop: the three phases plus the hand-offs between threads."""

    @property
    def total_tokens(self) -> int:
        return sum(self.pair_tokens)


@dataclass(frozen=True)
class EngineLimits:
    max_length: int
    max_batch_tokens: int
    max_queued_pairs: int


def choose_limits(config: EngineConfig, model: ModelDescription) -> EngineLimits:
    """The operator's limits, and the engine's choice where the operator set none: the one
    place the defaults live."""
    max_batch_tokens = config.max_batch_tokens or max(
        _DEFAULT_BATCH_TOKENS[model.device_type], model.max_length
    )
    max_queued_pairs = config.max_queued_pairs or max(
        _QUEUED_REQUESTS * config.largest_request_pairs, _MIN_QUEUED_PAIRS
    )
    return EngineLimits(model.max_length, max_batch_tokens, max_queued_pairs)


class RerankEngine:
    def __init__(
        self, model: ScoringModel, config: EngineConfig, observer: BatchObserver | None = None
    ) -> None:
        self.limits = choose_limits(config, model.description)
        self._model = model
        self._encoder = model.encoder
        self._batcher = Batcher(
            model,
            max_batch_tokens=self.limits.max_batch_tokens,
            overhead_tokens=_FALLBACK_PASS_OVERHEAD_TOKENS[model.description.device_type],
            max_queued_pairs=self.limits.max_queued_pairs,
            max_prefix_tokens=self.limits.max_batch_tokens if config.prefix_reuse else 0,
        )
        self.prefix_reuse = config.prefix_reuse
        self._pinned_overhead_tokens = config.pass_overhead_tokens
        self._observer = observer  # attached after the warm-up, which is not client traffic
        self._tokenizer_pool = ThreadPoolExecutor(
            max_workers=config.tokenizer_threads, thread_name_prefix="reranker-tokenize"
        )
        self.description: ModelDescription = model.description

    @property
    def queued_pairs(self) -> int:
        return self._batcher.queued_pairs

    def device_memory(self) -> DeviceMemory | None:
        return self._model.device_memory()

    @property
    def pass_overhead_tokens(self) -> int:
        """Fixed cost of a forward pass in token-equivalents, as the batch policy uses it."""
        return self._batcher.overhead_tokens

    async def start(self) -> None:
        """Calibrate the batch policy on the model (which also warms it up) unless its pass cost
        is pinned, start the worker, then send one request through the whole path so the first
        client pays no setup."""
        measured: float | None = None
        if self._pinned_overhead_tokens is not None:
            self._batcher.overhead_tokens = self._pinned_overhead_tokens
        else:
            measured = await asyncio.to_thread(
                measure_pass_overhead,
                self._model,
                self._encoder.prefix_ids,
                self.limits.max_batch_tokens,
            )
            if measured is not None:
                self._batcher.overhead_tokens = min(round(measured), self.limits.max_batch_tokens)
        logger.info(
            "batch_policy_calibrated",
            pass_overhead_tokens=self._batcher.overhead_tokens,
            measured=measured is not None,
            pinned=self._pinned_overhead_tokens is not None,
        )
        self._batcher.start()
        await self.rerank("warm-up", "warm-up query", _WARM_UP_DOCUMENTS)
        # The batcher reports a batch before it answers its requests, so the warm-up's report
        # is behind us.
        self._batcher.observer = self._observer

    async def stop(self) -> None:
        await self._batcher.stop()
        await asyncio.to_thread(self._tokenizer_pool.shutdown, wait=True)

    def _pairs_and_prefix(
        self, instruction: str, query: str, documents: Sequence[str]
    ) -> tuple[list[list[int]], SharedPrefix | None]:
        """The pairs' token ids and, with reuse on, the prefix worth sharing among them (see
        ``shared_prefix``); blocking, so it runs on the tokenizer pool."""
        token_ids = self._encoder.encode(instruction, query, documents)
        return token_ids, shared_prefix(token_ids) if self.prefix_reuse else None

    async def rerank(self, instruction: str, query: str, documents: Sequence[str]) -> RerankOutcome:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        token_ids, prefix = await loop.run_in_executor(
            self._tokenizer_pool, self._pairs_and_prefix, instruction, query, documents
        )
        tokenized = time.perf_counter()
        result = await self._batcher.score(token_ids, prefix)
        return RerankOutcome(
            scores=result.scores,
            pair_tokens=[len(ids) for ids in token_ids],
            tokenize_seconds=tokenized - started,
            queue_seconds=result.queue_seconds,
            inference_seconds=result.inference_seconds,
            engine_seconds=time.perf_counter() - started,
        )
