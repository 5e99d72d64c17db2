"""Identical pairs in flight are scored once: a request that misses the cache for a pair another
request is computing waits for that computation (bit for bit its score) instead of queueing the
pair again, and is never stranded by it: an owner that goes without the score leaves it to its
waiters. The engine runs the real model; the registry's own rules run on a bare event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence

import pytest

from reranker_service.engine.in_flight import Claim, InFlightScores, shared_scores
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.protocol import PassBatch, PendingScores, ServedModel
from reranker_service.engine.score_cache import CacheEvents, MemoryStore, ScoreCache
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.serving import GatedModel, sequences_of

QUERY = "which fruit is yellow"
DOCUMENTS = ["bananas are yellow", "the sky is blue", "lemons are yellow too"]


class GatedRecorder(GatedModel):
    """Passes wait at the gate; each one's pairs are counted once it runs."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__(model)
        self.pairs_computed = 0
        self._lock = threading.Lock()

    def launch(self, batch: PassBatch) -> PendingScores:
        pending = super().launch(batch)
        with self._lock:
            self.pairs_computed += len(sequences_of(batch))
        return pending


@pytest.fixture
async def engine(scoring_model: ServedModel) -> AsyncIterator[tuple[RerankEngine, GatedRecorder]]:
    runner = GatedRecorder(scoring_model)
    cache = ScoreCache(b"in-flight-test", [MemoryStore(10_000, 3600, CacheEvents())])
    served = RerankEngine(runner.served, EngineConfig(None, 10_000, 1000, 2), score_cache=cache)
    await served.start()
    runner.pairs_computed = 0  # the start's warm-up is not the test's
    yield served, runner
    runner.gate.set()
    await served.stop()


async def test_a_pair_another_request_is_computing_is_computed_once(
    engine: tuple[RerankEngine, GatedRecorder],
) -> None:
    served, runner = engine
    runner.gate.clear()
    runner.entered.clear()
    first = asyncio.create_task(served.rerank(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS))
    assert await asyncio.to_thread(runner.entered.wait, 30)  # its pairs claimed and in a pass
    second = asyncio.create_task(
        served.rerank(DEFAULT_INSTRUCTION, QUERY, [*DOCUMENTS, "grass is green"])
    )
    runner.gate.set()
    owner, sharer = await asyncio.gather(first, second)
    assert runner.pairs_computed == len(DOCUMENTS) + 1
    assert sharer.scores[: len(DOCUMENTS)] == owner.scores  # bit for bit
    assert (sharer.cache_hits, sharer.cache_misses) == (len(DOCUMENTS), 1)
    assert (owner.cache_hits, owner.cache_misses) == (0, len(DOCUMENTS))


async def test_a_request_repeating_a_document_computes_it_once(
    engine: tuple[RerankEngine, GatedRecorder],
) -> None:
    served, runner = engine
    outcome = await served.rerank(DEFAULT_INSTRUCTION, QUERY, [DOCUMENTS[0]] * 3)
    assert runner.pairs_computed == 1
    assert len(set(outcome.scores)) == 1
    assert (outcome.cache_hits, outcome.cache_misses) == (2, 1)


class SeenSharing(InFlightScores):
    """The engine's registry, telling the test when a request has claimed all the documents'
    pairs (it queues them in the same step) and when one has joined a computation."""

    def __init__(self) -> None:
        super().__init__()
        self.owned = asyncio.Event()
        self.joined = asyncio.Event()

    def claim(self, keys: Sequence[bytes], missing: Sequence[int], priority: int = 0) -> Claim:
        claim = super().claim(keys, missing, priority)
        if len(claim.owned) == len(DOCUMENTS):
            self.owned.set()
        if claim.shared:
            self.joined.set()
        return claim


async def test_a_cancelled_owner_leaves_its_pairs_to_the_request_waiting_for_them(
    engine: tuple[RerankEngine, GatedRecorder],
) -> None:
    served, runner = engine
    registry = served._in_flight = SeenSharing()
    runner.gate.clear()
    runner.entered.clear()
    # A request that holds the device, so that the owner's pairs wait in the queue.
    holder = asyncio.create_task(served.rerank(DEFAULT_INSTRUCTION, "held", ["held document"]))
    assert await asyncio.to_thread(runner.entered.wait, 30)
    owner = asyncio.create_task(served.rerank(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS))
    await asyncio.wait_for(registry.owned.wait(), 30)
    assert served.queued_pairs == len(DOCUMENTS)
    waiter = asyncio.create_task(served.rerank(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS))
    await asyncio.wait_for(registry.joined.wait(), 30)
    owner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await owner
    assert served.queued_pairs == 0  # the owner's pairs left the queue with it
    runner.gate.set()
    await holder
    answered = await asyncio.wait_for(waiter, 60)
    fresh = await served.rerank(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS, cache_lookup=False)
    assert answered.scores == fresh.scores
    assert answered.cache_misses == len(DOCUMENTS)  # computed by the waiter after all


async def test_a_waiter_is_given_the_owners_score_or_told_it_went() -> None:
    registry = InFlightScores()
    keys = [b"a", b"b", b"c"]
    owner = registry.claim(keys, [0, 1, 2])
    follower = registry.claim(keys, [0, 1], priority=0)
    assert (owner.owned, sorted(follower.shared)) == ([0, 1, 2], [0, 1])
    waiting = asyncio.ensure_future(shared_scores(follower))
    with registry.owning(keys, owner.owned):
        registry.settle(keys, {0: 1.5})  # the owner ends with one score of three
    scores, lost = await waiting
    assert (scores, lost) == ({0: 1.5}, [1])
    assert len(registry) == 0  # every key let go with its owner


async def test_a_request_never_waits_behind_work_at_a_later_priority() -> None:
    registry = InFlightScores()
    keys = [b"a"]
    registry.claim(keys, [0], priority=5)  # a batch job's pair
    urgent = registry.claim(keys, [0], priority=-5)
    later = registry.claim(keys, [0], priority=5)
    assert (urgent.shared, urgent.unclaimed) == ({}, [0])
    assert list(later.shared) == [0]


async def test_a_cancelled_waiter_does_not_cancel_the_computation() -> None:
    registry = InFlightScores()
    keys = [b"a"]
    owner = registry.claim(keys, [0])
    impatient = asyncio.ensure_future(shared_scores(registry.claim(keys, [0])))
    patient = asyncio.ensure_future(shared_scores(registry.claim(keys, [0])))
    await asyncio.sleep(0)
    impatient.cancel()
    with registry.owning(keys, owner.owned):
        registry.settle(keys, {0: 2.0})
    assert await patient == ({0: 2.0}, [])
