"""The rerank engine as the HTTP layer sees it: tokenize off the loop, batch, score.

Importing this module does not import torch; the model arrives already loaded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import structlog

from reranker_service.engine.in_flight import Claim, InFlightScores, shared_scores
from reranker_service.engine.pairs import Truncation
from reranker_service.engine.prefix import shared_prefix
from reranker_service.engine.runner.protocol import ServedModel, run_pass
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.jobs import BatchObserver, JobResult, PassShare
from reranker_service.engine.scheduler.pass_cost import PassCostModel, measure_pass_costs
from reranker_service.engine.score_cache import ScoreCache
from reranker_service.engine.scoring import (
    DeviceMemory,
    ModelDescription,
    default_batch_tokens,
    probability,
)
from reranker_service.engine.upgrade import RunnerObserver, RunnerStatus, RunnerUpgrader

logger = structlog.get_logger(__name__)

CALIBRATION_BUDGET_SECONDS = 6.0
"""Start-up time for measuring the pass cost. A slow device reaches only the small sizes in it
(docs/benchmark.md says which): the curve's extrapolation lets the policy try larger passes, and
the passes it serves extend the curve from there."""
# Pairs that may wait when the operator sets no limit: several full-size requests in flight.
_QUEUED_REQUESTS = 4
_MIN_QUEUED_PAIRS = 4096

_MODEL_CARD_TRUNCATION = Truncation()

# Two documents, so that the warm-up also takes the shared-prefix path; short, because on a
# CPU every token of it is start-up time.
_WARM_UP_DOCUMENTS = ("warm-up", "a warm-up document")


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
    priority_max_wait_seconds: float = 10.0
    """The aging bound: a pair waiting longer goes first whatever its priority."""
    device_share: int = 1
    """Served models with a worker on this one's busiest GPU: where the operator set no pass
    budget, each gets this share of the device's default, so that their passes together fit
    as one model's would."""
    pass_costs: tuple[tuple[float, float], ...] | None = None
    """``(tokens, seconds)`` of forward passes to start the batch policy from, instead of
    measuring them at start-up; given another engine's ``pass_costs``, two engines start
    batching alike (the benchmark compares them so)."""


class TooManyPairsError(Exception):
    """The request's pairs (a document's windows each count) exceed what one request may
    bring; nothing of it was queued."""

    def __init__(self, pairs: int, limit: int) -> None:
        super().__init__(f"{pairs} pairs (documents and their windows) requested, limit {limit}")
        self.pairs = pairs
        self.limit = limit


@dataclass(frozen=True)
class RerankOutcome:
    scores: list[float]
    """One score per document, in request order: P(yes), or the yes - no logit when raw scores
    were asked for; a document of several windows has its best window's."""
    pair_tokens: list[int]
    """Tokens fed to the model for each pair (each window of each document): prompt-wrapped
    and truncated."""
    windows: list[int]
    """Pairs each document was scored as: 1 unless it was split into windows."""
    started_at: float
    """``time.perf_counter()`` at the call; tokenizing began then."""
    tokenize_seconds: float
    queued_at: float
    """``time.perf_counter()`` when the pairs were queued; their queue wait began then."""
    queue_seconds: float
    inference_seconds: float
    engine_seconds: float
    """Wall time in the engine, from the call until the scores were back on the caller's event
    loop: the three phases plus the hand-offs between threads."""
    passes: tuple[PassShare, ...]
    """The forward passes that carried the request's pairs."""
    cache_hits: int = 0
    """Pairs whose scores came from the score cache."""
    cache_misses: int = 0
    """Pairs looked up in the score cache and not found (computed, then stored)."""
    cache_lookup_seconds: float | None = None
    """Time the lookup took; None when there was none (no cache, or ``no-cache``)."""
    computed_tokens: int = 0
    """Tokens the model computed for this request: those of the pairs its own passes scored,
    less the prefix tokens they read from a held prefix (a pass that ran out of memory and was
    redone in halves counts once, as its halves). 0 when the cache (or another request
    computing the same pairs) answered every pair."""

    @property
    def total_tokens(self) -> int:
        return sum(self.pair_tokens)

    @property
    def cache_result(self) -> str:
        """``hit`` (every pair cached), ``partial`` or ``miss``."""
        if self.cache_hits and not self.cache_misses:
            return "hit"
        return "partial" if self.cache_hits else "miss"


@dataclass(frozen=True)
class EngineLimits:
    max_length: int
    max_batch_tokens: int
    max_queued_pairs: int


def choose_limits(config: EngineConfig, model: ModelDescription) -> EngineLimits:
    """The operator's limits, and the engine's choice where the operator set none: the one
    place the defaults live."""
    max_batch_tokens = config.max_batch_tokens or max(
        default_batch_tokens(model.device_type, model.max_length) // config.device_share,
        model.max_length,
    )
    max_queued_pairs = config.max_queued_pairs or max(
        _QUEUED_REQUESTS * config.largest_request_pairs, _MIN_QUEUED_PAIRS
    )
    return EngineLimits(model.max_length, max_batch_tokens, max_queued_pairs)


class RerankEngine:
    def __init__(
        self,
        model: ServedModel,
        config: EngineConfig,
        observer: BatchObserver | None = None,
        score_cache: ScoreCache | None = None,
        runner_observer: RunnerObserver | None = None,
    ) -> None:
        """Serve ``model``: replicas of one checkpoint on one kind of device, each runner a
        worker of the one batcher, and each replaced by its compiled runner where the model
        has one (before ready, or in the background: see ``upgrade``). ``score_cache`` is
        looked up after tokenizing, and only the pairs it misses are queued.
        ``runner_observer`` hears of every change of a worker's runner."""
        descriptions = [runner.description for runner in model.runners]
        if len({description.device_type for description in descriptions}) != 1:
            raise ValueError("the replicas must all be on GPUs or all on the CPU")
        self.limits = choose_limits(config, model.description)
        self._encoder = model.encoder
        # An encoder's pairs cannot share a prefix computed apart: its runner says so.
        self.prefix_reuse = config.prefix_reuse and all(
            runner.reads_prefixes for runner in model.runners
        )
        self._batcher = Batcher(
            model.runners,
            max_batch_tokens=self.limits.max_batch_tokens,
            max_queued_pairs=self.limits.max_queued_pairs,
            max_prefix_tokens=self.limits.max_batch_tokens if self.prefix_reuse else 0,
            priority_max_wait_seconds=config.priority_max_wait_seconds,
        )
        self._upgrader = RunnerUpgrader(
            self._batcher,
            [
                (runner.description.device, upgrade)
                for index, runner in enumerate(model.runners)
                if (upgrade := model.upgrade_of(index)) is not None
            ],
            pass_cost_token_ids=self._encoder.filler_ids,
            max_batch_tokens=self.limits.max_batch_tokens,
            pinned_pass_costs=config.pass_costs,
            observer=runner_observer,
        )
        self._largest_request_pairs = config.largest_request_pairs
        self._pinned_pass_costs = config.pass_costs
        self._observer = observer  # attached after the warm-up, which is not client traffic
        self._score_cache = score_cache
        self._cache: ScoreCache | None = None  # likewise
        self._in_flight = InFlightScores()
        self._tokenizer_pool = ThreadPoolExecutor(
            max_workers=config.tokenizer_threads, thread_name_prefix="reranker-tokenize"
        )
        self.description: ModelDescription = model.description
        self.descriptions: list[ModelDescription] = descriptions
        """One per worker."""

    @property
    def takes_instruction(self) -> bool:
        """Whether the served model reads an instruction (a prompted one, Qwen3-Reranker)."""
        return self._encoder.takes_instruction

    @property
    def queued_pairs(self) -> int:
        return self._batcher.queued_pairs

    def device_memory(self) -> list[DeviceMemory]:
        """torch's allocator on each served GPU; empty on the CPU."""
        readings = (runner.memory() for runner in self._batcher.runners)
        return [reading for reading in readings if reading is not None]

    def runner_statuses(self) -> list[RunnerStatus]:
        """Each worker's runner now, and where its compiled runner stands."""
        return self._upgrader.statuses()

    @property
    def lost_devices(self) -> dict[str, str]:
        """Workers whose device failed for good (a sticky device error), and why."""
        return self._batcher.lost_devices

    def wait_for_compiled_runners(self, timeout: float | None = None) -> bool:
        """Wait (bounded) until the background compile has ended, swapped in or fallen back;
        whether it has. For tools and tests: serving never waits for it."""
        return self._upgrader.wait(timeout)

    @property
    def overlapping_passes(self) -> bool:
        """Whether the workers launch the next pass before the current one's scores are in."""
        return self._batcher.overlapping

    @property
    def pass_costs(self) -> PassCostModel:
        """What the batch policy predicts a forward pass costs, as measured at start-up; each
        worker keeps its own copy current."""
        return self._batcher.pass_costs

    async def start(self) -> None:
        """Bring in the compiled runners if the replica waits for them (``RERANKER_COMPILE=
        true``); measure the pass cost on the model (which also warms it up) unless it is
        pinned or was measured with them; start the workers, then send one request through the
        whole path so the first client pays no setup; log both and what they took. Compiled
        runners meant for the background start compiling last."""
        started = time.perf_counter()
        if self._upgrader.foreground:
            await asyncio.to_thread(self._upgrader.run_foreground)
            measured: Sequence[tuple[float, float]] = self._batcher.pass_costs.points
        elif self._pinned_pass_costs is not None:
            measured = self._pinned_pass_costs
        else:
            # Once for the device type: the replicas are alike, and each worker corrects its
            # copy of the curve from its own passes.
            measured = (
                await asyncio.to_thread(
                    measure_pass_costs,
                    self._batcher.runners[0],
                    self._encoder.filler_ids,
                    self.limits.max_batch_tokens,
                    CALIBRATION_BUDGET_SECONDS,
                )
            ).points
        self._batcher.set_pass_costs(measured)
        measured_at = time.perf_counter()
        # The measurement ran the first replica; every other runs a pass before any client.
        if len(self._batcher.runners) > 1:
            warm_up_ids = self._encoder.encode("warm-up", "warm-up query", _WARM_UP_DOCUMENTS)
            for runner in self._batcher.runners[1:]:
                await asyncio.to_thread(run_pass, runner, warm_up_ids)
        self._batcher.start()
        await self.rerank("warm-up", "warm-up query", _WARM_UP_DOCUMENTS)
        # The batcher times and reports a pass before it answers its requests, so the warm-up's
        # are behind us. Its passes paid first-use setup: they are no measure of the device.
        self._batcher.set_pass_costs(measured)
        costs = self._batcher.pass_costs
        self._batcher.observer = self._observer
        self._cache = self._score_cache
        finished = time.perf_counter()
        logger.info(
            "batch_policy_calibrated",
            seconds=round(finished - started, 3),
            warm_up_seconds=round(finished - measured_at, 3),
            pinned=self._pinned_pass_costs is not None,
            saturation_tokens=costs.saturation_tokens(),
            max_batch_tokens=self.limits.max_batch_tokens,
            pass_ms=[[round(tokens), round(seconds * 1e3, 3)] for tokens, seconds in costs.points],
            overlapping_passes=self.overlapping_passes,
            workers=self._batcher.worker_names,
        )
        if self._upgrader.planned and not self._upgrader.foreground:
            self._upgrader.start_background()

    async def stop(self) -> None:
        await asyncio.to_thread(self._upgrader.stop)
        await self._batcher.stop()
        if self._score_cache is not None:
            await self._score_cache.close()
        await asyncio.to_thread(self._tokenizer_pool.shutdown, wait=True)

    def _pairs_and_prefix(
        self,
        instruction: str,
        queries: Sequence[str],
        documents: Sequence[str],
        truncation: Truncation,
        cache: ScoreCache | None,
    ) -> tuple[list[list[list[int]]], int, list[bytes]]:
        """Each document's pairs' token ids (``queries[i]`` goes with ``documents[i]``; one
        query may serve all), with reuse on the length of the prefix worth sharing among all
        the pairs (see ``shared_prefix``), and each pair's key in ``cache``; blocking (hashing
        thousands of long pairs takes milliseconds too), so it runs on the tokenizer pool."""
        if len(queries) == 1:
            windows = self._encoder.encode_windows(instruction, queries[0], documents, truncation)
        else:
            windows = [
                self._encoder.encode_windows(instruction, query, [document], truncation)[0]
                for query, document in zip(queries, documents, strict=True)
            ]
        pairs = [pair for document_pairs in windows for pair in document_pairs]
        if len(pairs) > self._largest_request_pairs:
            raise TooManyPairsError(len(pairs), self._largest_request_pairs)
        keys = cache.keys(pairs) if cache is not None else []
        return windows, shared_prefix(pairs) if self.prefix_reuse else 0, keys

    async def _compute(
        self, pairs: list[list[int]], indices: list[int], prefix_length: int, priority: int
    ) -> tuple[JobResult, dict[int, float]]:
        """Score ``pairs[i]`` for each of ``indices`` (all of them, or the ones the cache and
        other requests did not answer, whose shared prefix is measured again): the job's
        result, and each index's score."""
        chosen = pairs
        if len(indices) < len(pairs):
            chosen = [pairs[index] for index in indices]
            prefix_length = shared_prefix(chosen) if self.prefix_reuse else 0
        result = await self._batcher.run(chosen, prefix_length, priority)
        return result, dict(zip(indices, result.scores, strict=True))

    async def rerank(
        self,
        instruction: str,
        query: str | Sequence[str],
        documents: Sequence[str],
        *,
        truncation: Truncation = _MODEL_CARD_TRUNCATION,
        raw_scores: bool = False,
        priority: int = 0,
        cache_lookup: bool = True,
    ) -> RerankOutcome:
        """Score ``documents`` against ``query`` (or each against its own entry of a list of
        queries); lower ``priority`` first. Pairs the score cache has are not queued (without
        ``cache_lookup`` none are looked up; the fresh scores are stored either way). Raises
        ``PairTooLongError`` and ``TooManyPairsError`` before anything is queued."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        queries = [query] if isinstance(query, str) else list(query)
        cache = self._cache
        windows, prefix_length, keys = await loop.run_in_executor(
            self._tokenizer_pool,
            self._pairs_and_prefix,
            instruction,
            queries,
            documents,
            truncation,
            cache,
        )
        tokenized = time.perf_counter()
        pairs = [pair for document_pairs in windows for pair in document_pairs]
        found: list[float | None] = [None] * len(pairs)
        lookup_seconds = None
        if cache is not None and cache_lookup:
            found = await cache.get_many(keys)
            lookup_seconds = time.perf_counter() - tokenized
        missing = [index for index, score in enumerate(found) if score is None]
        computed: dict[int, float] = {}
        queued_at, queue_seconds, inference_seconds = time.perf_counter(), 0.0, 0.0
        passes: tuple[PassShare, ...] = ()
        # Pairs another request is computing now are waited for, not queued again (only with a
        # cache, whose keys name them, and where the request takes cached scores at all).
        sharing = cache is not None and cache_lookup
        claim = self._in_flight.claim(keys, missing, priority) if sharing else Claim(missing)
        with self._in_flight.owning(keys, claim.owned if sharing else []):
            here = claim.computed_here
            if here:
                result, owned_scores = await self._compute(pairs, here, prefix_length, priority)
                computed.update(owned_scores)
                if sharing:
                    self._in_flight.settle(keys, {i: owned_scores[i] for i in claim.owned})
                if cache is not None:
                    await cache.put_many([(keys[i], score) for i, score in owned_scores.items()])
                queued_at, queue_seconds = result.submitted_at, result.queue_seconds
                inference_seconds, passes = result.inference_seconds, result.passes
        joined, orphaned = await shared_scores(claim)
        computed.update(joined)
        if orphaned:  # their owner went without them: computed here after all
            result, orphaned_scores = await self._compute(pairs, orphaned, prefix_length, priority)
            computed.update(orphaned_scores)
            if cache is not None:
                await cache.put_many([(keys[i], score) for i, score in orphaned_scores.items()])
            if not here:
                queued_at, queue_seconds = result.submitted_at, result.queue_seconds
            inference_seconds += result.inference_seconds
            passes += result.passes
        computed_here = len(here) + len(orphaned)
        computed_tokens = sum(len(pairs[index]) for index in (*here, *orphaned)) - sum(
            share.reused_tokens for share in passes if not share.failed
        )
        logits = iter(
            [computed[index] if score is None else score for index, score in enumerate(found)]
        )
        best = [max(itertools.islice(logits, len(document_pairs))) for document_pairs in windows]
        # A pair shared with the request computing it counts as a hit: the cache's key found
        # a score (on its way) and no pass computed it again.
        hits = len(pairs) - computed_here if lookup_seconds is not None else 0
        return RerankOutcome(
            scores=best if raw_scores else [probability(logit) for logit in best],
            pair_tokens=[len(ids) for ids in pairs],
            windows=[len(document_pairs) for document_pairs in windows],
            started_at=started,
            tokenize_seconds=tokenized - started,
            queued_at=queued_at,
            queue_seconds=queue_seconds,
            inference_seconds=inference_seconds,
            engine_seconds=time.perf_counter() - started,
            passes=passes,
            cache_hits=hits,
            cache_misses=computed_here if lookup_seconds is not None else 0,
            cache_lookup_seconds=lookup_seconds,
            computed_tokens=computed_tokens,
        )
