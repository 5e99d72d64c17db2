"""Request priorities: the next pass anchors on the first pair by (priority, arrival), a pair
past the aging bound goes first whatever its priority, and the API takes the priority from the
body or the X-Reranker-Priority header. The queue and the scheduler run on a fake clock here:
aging is exact, and no test waits for a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest

from reranker_service.engine.runner.protocol import padded_pass_tokens
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.core import PassOutcome, PassUpdate, Scheduler, WorkerSlot
from reranker_service.engine.scheduler.jobs import BatchReport, JobState, ScoringJob
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scheduler.passes import QueuedPair
from reranker_service.engine.scheduler.prefixes import PrefixManager
from reranker_service.engine.scheduler.queue import PairQueue
from tests.support.exposition import Exposition
from tests.support.fake_runner import FakeRunner, fake_logit
from tests.support.serving import AppFactory, FakeClock, asgi_client

COSTS = [(64, 0.002), (128, 0.0025), (1024, 0.01)]
"""A pass cost with a fixed part: pairs of similar length are worth batching."""


def _tokens(request: int, length: int) -> list[int]:
    return [1000 + request, *range(length)]


def _take(queue: PairQueue) -> list[QueuedPair]:
    return queue.take(1, lambda tokens: float(tokens), lambda shape: shape.pairs * shape.longest)


def _job(clock: FakeClock, priority: int, size: int = 1) -> ScoringJob:
    return ScoringJob(asyncio.get_running_loop(), size, priority, submitted_at=clock())


async def test_the_lowest_priority_value_anchors_the_next_pass() -> None:
    """A budget of one pair per pass: passes come out by (priority, arrival)."""
    clock = FakeClock()
    queue = PairQueue(max_wait_seconds=60, clock=clock)
    for request, priority in enumerate((5, 0, -3, 0, -3)):
        queue.add(_job(clock, priority), [_tokens(request, 10 + request)])
        clock.advance(1)
    order = [(pair.job.priority, pair.tokens[0]) for pair in (_take(queue)[0] for _ in range(5))]
    assert order == [(-3, 1002), (-3, 1004), (0, 1001), (0, 1003), (5, 1000)]


async def test_a_pair_past_the_aging_bound_goes_first_whatever_its_priority() -> None:
    clock = FakeClock()
    queue = PairQueue(max_wait_seconds=10, clock=clock)
    old = _job(clock, priority=10)
    queue.add(old, [_tokens(0, 50)])
    clock.advance(10)
    for request in range(1, 4):
        queue.add(_job(clock, priority=-10), [_tokens(request, 20)])
    # At the bound, not past it: the high priorities still go first.
    assert _take(queue)[0].job.priority == -10
    clock.advance(0.001)
    assert _take(queue)[0].job is old
    assert {_take(queue)[0].job.priority for _ in range(2)} == {-10}


async def test_a_young_low_priority_pair_waits_for_the_high_ones() -> None:
    clock = FakeClock()
    queue = PairQueue(max_wait_seconds=10, clock=clock)
    young = _job(clock, priority=10)
    queue.add(young, [_tokens(0, 50)])
    clock.advance(9)
    queue.add(_job(clock, priority=-1), [_tokens(1, 20)])
    assert _take(queue)[0].job.priority == -1
    assert _take(queue)[0].job is young


def _scheduler(clock: FakeClock, max_batch_tokens: int, max_wait: float = 60) -> Scheduler:
    scheduler = Scheduler(
        max_batch_tokens=max_batch_tokens,
        max_queued_pairs=100_000,
        prefixes=PrefixManager(0, on_device=True),
        priority_max_wait_seconds=max_wait,
        clock=clock,
    )
    scheduler.add_worker(WorkerSlot("cpu", padded_pass_tokens, True, PassCostModel(COSTS)))
    return scheduler


def _submit(scheduler: Scheduler, sequences: Sequence[Sequence[int]], priority: int) -> ScoringJob:
    job = ScoringJob(
        asyncio.get_running_loop(), len(sequences), priority, submitted_at=scheduler.clock()
    )
    scheduler.admit(job, sequences, 0)
    return job


def _run_pass(scheduler: Scheduler, clock: FakeClock, seconds: float) -> PassUpdate:
    """``schedule`` a pass, let it take ``seconds`` of the fake clock, ``update``."""
    output = scheduler.schedule("cpu")
    assert output.pairs, "a pass was due"
    flight = output.flight(clock())
    clock.advance(seconds)
    scores = [fake_logit(pair.tokens) for pair in output.pairs]
    return scheduler.update(flight, PassOutcome(scores, None, clock()))


async def test_a_high_priority_request_overtakes_a_flood_of_low_priority_ones() -> None:
    """With hundreds of low-priority pairs queued, a high-priority request's pairs make up the
    next passes, nothing else until its request is done."""
    clock = FakeClock()
    scheduler = _scheduler(clock, max_batch_tokens=512)
    flood = [
        _submit(scheduler, [_tokens(100 + r, 30 + d % 7) for d in range(20)], priority=5)
        for r in range(20)
    ]
    first = _run_pass(scheduler, clock, 0.05)
    assert set(first.record.queue_wait_priorities) == {5}
    urgent_pairs = [_tokens(7, 20 + d) for d in range(8)]
    urgent = _submit(scheduler, urgent_pairs, priority=-5)
    queued = scheduler.queued_pairs
    overtaking = [_run_pass(scheduler, clock, 0.05)]
    while urgent.state is not JobState.DONE and len(overtaking) < 8:
        overtaking.append(_run_pass(scheduler, clock, 0.05))
    assert urgent.state is JobState.DONE
    assert [p for u in overtaking for p in u.record.queue_wait_priorities] == [-5] * 8
    assert scheduler.queued_pairs == queued - 8
    assert overtaking[-1].answers.jobs == [urgent]
    assert urgent.scores == [fake_logit(pair) for pair in urgent_pairs]
    assert all(job.state in {JobState.WAITING, JobState.RUNNING} for job in flood)


async def test_a_low_priority_pair_goes_in_the_first_pass_after_its_aging_bound() -> None:
    """A stream of high-priority requests that never lets the queue empty (one pair per pass,
    each pass 0.125 s): the low-priority pair waits exactly until the first pass chosen after
    it aged past 0.5 s, and the pass record says so."""
    clock = FakeClock()
    scheduler = _scheduler(clock, max_batch_tokens=len(_tokens(0, 40)), max_wait=0.5)
    for request in range(3):
        _submit(scheduler, [_tokens(request, 40)], priority=-10)
    low = _submit(scheduler, [_tokens(99, 40)], priority=10)
    taken: list[tuple[int, ...]] = []
    for request in range(3, 12):
        _submit(scheduler, [_tokens(request, 40)], priority=-10)  # the stream keeps coming
        update = _run_pass(scheduler, clock, 0.125)
        taken.append(update.record.queue_wait_priorities)
        if low.state is JobState.DONE:
            assert update.record.queue_wait_seconds == (0.625,)
            break
    # Passes chosen at 0, 0.125, ... 0.5 s (not past the bound) were the stream's; at 0.625 s,
    # the low pair's.
    assert taken == [(-10,)] * 5 + [(10,)]
    assert low.scores == [fake_logit(_tokens(99, 40))]


async def test_the_batchers_clock_times_aging_and_waits_through_its_workers() -> None:
    """The real threaded path on an injected clock: a low-priority request queued 11 s (of
    the fake clock) before three high-priority ones goes first, and every pass reports the
    wait the scheduler measured on that clock."""
    clock = FakeClock()
    runner = FakeRunner()
    reports: list[BatchReport] = []
    batcher = Batcher(
        [runner],
        max_batch_tokens=len(_tokens(0, 30)),
        max_queued_pairs=100,
        observer=reports.append,
        priority_max_wait_seconds=10,
        clock=clock,
    )
    low = batcher.submit([_tokens(0, 30)], priority=10)
    clock.advance(11)
    high = [batcher.submit([_tokens(r, 30)], priority=-10) for r in range(1, 4)]
    batcher.start()
    results = await asyncio.gather(low.future, *(job.future for job in high))
    await batcher.stop()
    assert runner.batches[0].pairs[0].tokens == _tokens(0, 30)
    assert [r.queue_wait_priorities for r in reports] == [(10,), (-10,), (-10,), (-10,)]
    assert [r.queue_wait_seconds for r in reports] == [(11.0,), (0.0,), (0.0,), (0.0,)]
    assert results[0].queue_seconds == 11.0
    assert [result.scores for result in results] == [[fake_logit(_tokens(r, 30))] for r in range(4)]


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
    # One pair a pass (no measured cost: batching saves nothing), by priority: the queue
    # held them all when the worker started.
    passes = [report.queue_wait_priorities for report in reports]
    assert passes == [(-7,)] * 3 + [(0,)] * 3 + [(4,)] * 3


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
