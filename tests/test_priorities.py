"""Request priorities: the next pass anchors on the first pair by (priority, arrival), a pair
past the aging bound goes first whatever its priority, and the API takes the priority from the
body or the X-Reranker-Priority header."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.jobs import BatchReport, ScoringJob
from reranker_service.engine.scheduler.passes import QueuedPair
from reranker_service.engine.scheduler.queue import PairQueue
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.conftest import AppFactory, asgi_client
from tests.exposition import Exposition
from tests.fake_runner import FakeRunner, fake_logit


def _set_from_thread(loop: asyncio.AbstractEventLoop, event: asyncio.Event) -> None:
    loop.call_soon_threadsafe(event.set)


def _tokens(request: int, length: int) -> list[int]:
    return [1000 + request, *range(length)]


def _take(queue: PairQueue) -> list[QueuedPair]:
    return queue.take(1, lambda tokens: float(tokens), lambda shape: shape.pairs * shape.longest)


async def test_the_lowest_priority_value_anchors_the_next_pass() -> None:
    """A budget of one pair per pass: passes come out by (priority, arrival)."""
    loop = asyncio.get_running_loop()
    queue = PairQueue(max_wait_seconds=60)
    now = time.perf_counter()
    for request, priority in enumerate((5, 0, -3, 0, -3)):
        queue.add(ScoringJob(loop, 1, priority), [_tokens(request, 10 + request)], now)
    order = [_take(queue)[0].job.priority for _ in range(5)]
    assert order == [-3, -3, 0, 0, 5]


async def test_a_pair_past_the_aging_bound_goes_first_whatever_its_priority() -> None:
    loop = asyncio.get_running_loop()
    queue = PairQueue(max_wait_seconds=10)
    now = time.perf_counter()
    old = ScoringJob(loop, 1, priority=10)
    queue.add(old, [_tokens(0, 50)], now - 11)  # queued 11 s ago
    for request in range(1, 4):
        queue.add(ScoringJob(loop, 1, priority=-10), [_tokens(request, 20)], now)
    assert _take(queue)[0].job is old
    assert {_take(queue)[0].job.priority for _ in range(3)} == {-10}


async def test_a_young_low_priority_pair_waits_for_the_high_ones() -> None:
    loop = asyncio.get_running_loop()
    queue = PairQueue(max_wait_seconds=10)
    now = time.perf_counter()
    young = ScoringJob(loop, 1, priority=10)
    queue.add(young, [_tokens(0, 50)], now - 9)
    queue.add(ScoringJob(loop, 1, priority=-1), [_tokens(1, 20)], now)
    assert _take(queue)[0].job.priority == -1
    assert _take(queue)[0].job is young


async def test_priorities_through_the_batcher_keep_every_score_and_report_their_waits() -> None:
    runner = FakeRunner()
    reports: list[BatchReport] = []
    batcher = Batcher([runner], max_batch_tokens=64, max_queued_pairs=1000, observer=reports.append)
    requests = {priority: [_tokens(priority + 20, 30)] * 3 for priority in (-7, 0, 4)}
    jobs = {p: batcher.submit(pairs, priority=p) for p, pairs in requests.items()}
    batcher.start()
    results = {p: await job.future for p, job in jobs.items()}
    await batcher.stop()
    assert runner.batches[0].pairs[0].tokens == requests[-7][0]
    for priority, result in results.items():
        assert result.scores == [fake_logit(pair) for pair in requests[priority]]
    waits = [p for report in reports for p in report.queue_wait_priorities]
    assert sorted(waits) == sorted([-7] * 3 + [0] * 3 + [4] * 3)


@dataclass(frozen=True)
class _Pass:
    reported_at: float
    priorities: frozenset[int]


async def test_a_high_priority_request_overtakes_a_flood_of_low_priority_ones(
    scoring_model: ServedModel,
) -> None:
    """With the queue kept full by low-priority requests, a high-priority request's pairs go in
    the next pass: between its queueing and its own pass, the worker finishes at most the
    flood's pass that was running (and one that ended as it was queued), never another of the
    flood's hundreds of queued pairs. Counted in passes, not timed: two busy cores time
    latencies too unevenly for a bound in milliseconds."""
    flood_served = asyncio.Event()
    loop = asyncio.get_running_loop()
    passes: list[_Pass] = []

    def observe(report: BatchReport) -> None:
        passes.append(_Pass(time.perf_counter(), frozenset(report.queue_wait_priorities)))
        _set_from_thread(loop, flood_served)

    engine = RerankEngine(
        scoring_model,
        EngineConfig(1024, 1_000_000, 1000, 2, priority_max_wait_seconds=60),
        observer=observe,
    )
    await engine.start()
    documents = [f"document {index} about the urgent topic" for index in range(8)]
    flood_documents = [f"bulk document {index} " * 20 for index in range(200)]
    stop = asyncio.Event()

    async def flood(client: int) -> int:
        sent = 0
        while not stop.is_set() and sent < 200:  # bounded
            await engine.rerank(DEFAULT_INSTRUCTION, f"bulk {client}", flood_documents, priority=5)
            sent += 1
        return sent

    overtaken: list[int] = []
    try:
        flooders = [asyncio.create_task(flood(client)) for client in range(2)]
        await flood_served.wait()  # its first pass ran; the rest of it waits in the queue
        for _ in range(5):
            urgent = await engine.rerank(DEFAULT_INSTRUCTION, "urgent", documents, priority=-5)
            assert engine.queued_pairs > 0, "the flood kept the queue busy throughout"
            first_urgent = next(index for index, ran in enumerate(passes) if -5 in ran.priorities)
            between = passes[:first_urgent]
            overtaken.append(sum(1 for ran in between if ran.reported_at > urgent.queued_at))
            passes.clear()
        stop.set()
        await asyncio.gather(*flooders)
    finally:
        stop.set()
        await engine.stop()
    assert max(overtaken) <= 2, overtaken


async def test_a_low_priority_request_finishes_within_its_aging_bound(
    scoring_model: ServedModel,
) -> None:
    """A stream of high-priority requests that never lets the queue empty: a low-priority
    pair still starts within two passes (the one running when it aged and one chosen beside it;
    the slowest pass seen) of the aging bound, or of the longest wait of a high-priority pair if
    that is longer: once aged, a pair waits only behind pairs that aged before it. The waits are
    the scheduler's own, from queue to pass: tokenizing, on two cores shared with six streams,
    is not the queue's doing."""
    max_wait = 0.5
    reports: list[BatchReport] = []
    stream_served = asyncio.Event()
    loop = asyncio.get_running_loop()

    def observe(report: BatchReport) -> None:
        reports.append(report)
        loop.call_soon_threadsafe(stream_served.set)

    engine = RerankEngine(
        scoring_model,
        EngineConfig(2048, 1_000_000, 1000, 2, priority_max_wait_seconds=max_wait),
        observer=observe,
    )
    await engine.start()
    documents = [f"high priority document {index} " * 10 for index in range(30)]
    stop = asyncio.Event()

    async def stream(client: int) -> None:
        for _ in range(500):  # bounded
            if stop.is_set():
                return
            await engine.rerank(DEFAULT_INSTRUCTION, f"high {client}", documents, priority=-10)

    try:
        streams = [asyncio.create_task(stream(client)) for client in range(6)]
        await stream_served.wait()
        await engine.rerank(DEFAULT_INSTRUCTION, "patient query", ["the low document"], priority=10)
        busy = engine.queued_pairs
        stop.set()
        await asyncio.gather(*streams)
    finally:
        stop.set()
        await engine.stop()
    assert busy > 0, "the high-priority stream kept the queue busy"
    slowest_pass = max(report.inference_seconds for report in reports)
    waits: dict[int, list[float]] = {}
    for report in reports:
        for wait, priority in zip(
            report.queue_wait_seconds, report.queue_wait_priorities, strict=True
        ):
            waits.setdefault(priority, []).append(wait)
    (low_wait,) = waits[10]
    aged_after = max(max_wait, *waits[-10])
    assert low_wait <= aged_after + 2 * slowest_pass, (low_wait, aged_after, slowest_pass)


@pytest.mark.parametrize("value", [-11, 11])
async def test_a_priority_out_of_range_is_refused(client: httpx.AsyncClient, value: int) -> None:
    body = {"query": "q", "documents": ["a"], "priority": value}
    response = await client.post("/rerank", json=body)
    assert response.status_code == 422
    header = await client.post(
        "/v2/rerank",
        json={"query": "q", "documents": ["a"]},
        headers={"X-Reranker-Priority": str(value)},
    )
    assert header.status_code == 422
    assert header.json()["error"]["field"] == "X-Reranker-Priority"


async def test_each_route_takes_a_priority_and_the_wait_is_labelled_by_its_class(
    app_factory: AppFactory, checkpoint: Path
) -> None:
    async with asgi_client(app_factory()) as http:
        # Distinct documents: a pair the score cache has never waits in the queue.
        calls = [
            http.post("/rerank", json={"query": "q", "documents": ["a", "b"], "priority": -2}),
            http.post("/v1/rerank", json={"query": "q", "documents": ["c"]}),
            http.post(
                "/v2/rerank",
                json={"query": "q", "documents": ["d", "e", "f"]},
                headers={"X-Reranker-Priority": "3"},
            ),
            http.post("/rerank", json={"query": "q", "texts": ["g"], "priority": 4}),
            http.post(
                "/score",
                json={"text_1": "q", "text_2": ["h", "i"], "priority": 0},
                headers={"X-Reranker-Priority": "-9"},  # the body's wins
            ),
        ]
        for call in calls:
            assert (await call).status_code == 200
        exposition = Exposition((await http.get("/metrics")).text)

    def waits(priority: str) -> float:
        return exposition.histogram("reranker_queue_wait_seconds", priority=priority).count

    assert (waits("high"), waits("normal"), waits("low")) == (2, 1 + 2, 3 + 1)
