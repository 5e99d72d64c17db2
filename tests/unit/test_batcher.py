"""The scheduler forms batches across requests and never mixes up whose score is whose. These
tests drive it with the pure-Python fake runner: no torch, no checkpoint. The first ones drive
its steps (``schedule``, ``update``) one pass at a time on a fake clock, with no thread; the
rest run the threaded ``Batcher`` end to end."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading

import pytest

from reranker_service.engine.prefix import shared_prefix
from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    DeviceLostError,
    PassShape,
    padded_pass_tokens,
)
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.core import (
    PassOutcome,
    PassUpdate,
    Scheduler,
    SchedulerOutput,
    WorkerSlot,
)
from reranker_service.engine.scheduler.jobs import (
    BatchReport,
    EngineStoppedError,
    JobState,
    NonFiniteScoresError,
    PairTooLargeError,
    QueueFullError,
    ScoringJob,
)
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scheduler.prefixes import PrefixManager
from tests.support.fake_runner import FakeRunner, fake_logit
from tests.support.paths import ROOT
from tests.support.serving import FakeClock

PROMPT = list(range(100, 130))
"""Stands for the system prompt and instruction every pair starts with."""
SUFFIX = [7, 8, 9]


def _pairs(query: int, document_lengths: list[int]) -> list[list[int]]:
    """One request's pairs: the prompt, its query, a document, the suffix."""
    return [
        [*PROMPT, 1000 + query, 2000 + query, *range(3000 + d, 3000 + d + length), *SUFFIX]
        for d, length in enumerate(document_lengths)
    ]


def _requests(count: int) -> list[list[list[int]]]:
    return [_pairs(r, [1 + (r * 7 + d * 13) % 60 for d in range(1 + r % 5)]) for r in range(count)]


def _batcher(
    runner: FakeRunner,
    reports: list[BatchReport] | None = None,
    *,
    max_prefix_tokens: int = 0,
    max_batch_tokens: int = 2048,
) -> Batcher:
    return Batcher(
        [runner],
        max_batch_tokens=max_batch_tokens,
        pass_costs=PassCostModel([(64, 0.002), (128, 0.0025), (1024, 0.01)]),
        max_queued_pairs=1000,
        max_prefix_tokens=max_prefix_tokens,
        observer=reports.append if reports is not None else None,
    )


def _exact(requests: list[list[list[int]]], scores: list[list[float]]) -> bool:
    return all(
        result == [fake_logit(pair) for pair in pairs]
        for pairs, result in zip(requests, scores, strict=True)
    )


COSTS = [(64, 0.002), (128, 0.0025), (1024, 0.01)]
PASS_SECONDS = 1 / 128


def _scheduler(
    clock: FakeClock,
    *,
    workers: tuple[str, ...] = ("cpu",),
    max_prefix_tokens: int = 0,
    max_batch_tokens: int = 2048,
    max_queued_pairs: int = 1000,
) -> Scheduler:
    scheduler = Scheduler(
        max_batch_tokens=max_batch_tokens,
        max_queued_pairs=max_queued_pairs,
        prefixes=PrefixManager(max_prefix_tokens, on_device=True),
        clock=clock,
    )
    for name in workers:
        scheduler.add_worker(WorkerSlot(name, padded_pass_tokens, True, PassCostModel(COSTS)))
    return scheduler


def _submit(scheduler: Scheduler, sequences: list[list[int]], prefix_length: int = 0) -> ScoringJob:
    loop = asyncio.get_running_loop()
    job = ScoringJob(loop, len(sequences), submitted_at=scheduler.clock())
    scheduler.admit(job, sequences, prefix_length)
    return job


def _state(job: ScoringJob) -> JobState:
    """The job's state now (read through a call, so that mypy does not keep an earlier one)."""
    return job.state


def _scores(output: SchedulerOutput) -> list[float]:
    return [fake_logit(pair.tokens) for pair in output.pairs]


def _finish(
    scheduler: Scheduler,
    output: SchedulerOutput,
    clock: FakeClock,
    *,
    scores: list[float] | None = None,
    error: Exception | None = None,
) -> PassUpdate:
    """Run the scheduled pass "on the device" for 1/128 s of the fake clock (exact in binary),
    then ``update``."""
    flight = output.flight(clock())
    if error is None:
        scheduler.launched(output)
    clock.advance(PASS_SECONDS)
    outcome = PassOutcome(_scores(output) if scores is None else scores, error, clock())
    return scheduler.update(flight, outcome)


async def test_schedule_plans_a_pass_and_update_answers_its_requests() -> None:
    """``schedule`` only decides (the pairs, the prefixes to compute), ``update`` writes the
    scores, moves each job to its state, bills the pass and hands back the finished jobs."""
    clock = FakeClock()
    scheduler = _scheduler(clock, max_prefix_tokens=4096)
    requests = [_pairs(0, [3, 4, 5]), _pairs(1, [6])]
    jobs = [_submit(scheduler, pairs, shared_prefix(pairs)) for pairs in requests]
    assert [job.state for job in jobs] == [JobState.WAITING, JobState.WAITING]
    assert jobs[0].prefix_id is not None
    assert jobs[1].prefix_id is None  # one document: nothing to share
    clock.advance(2)
    output = scheduler.schedule("cpu")
    assert len(output.pairs) == 4
    assert output.new_prefixes == {jobs[0].prefix_id}
    assert output.released == []
    assert scheduler.queued_pairs == 0
    assert [job.state for job in jobs] == [JobState.RUNNING, JobState.RUNNING]
    assert [job.first_batch_at for job in jobs] == [clock(), clock()]
    update = _finish(scheduler, output, clock)
    assert [job.state for job in jobs] == [JobState.DONE, JobState.DONE]
    assert {id(job) for job in update.answers.jobs} == {id(job) for job in jobs}
    assert update.answers.released_prefixes
    assert update.record.queue_wait_seconds == (2.0,) * 4
    assert update.record.seconds == PASS_SECONDS
    assert _exact(requests, [job.scores for job in jobs])
    assert jobs[0].result().queue_seconds == 2.0
    assert jobs[0].passes[0].pairs == 3
    # The finished request's prefix is let go at the worker's next step.
    assert scheduler.prefixes.tokens_held == 0
    assert scheduler.schedule("cpu").released == [jobs[0].prefix_id]


async def test_a_release_reaches_every_worker_and_a_held_prefix_is_not_computed_again() -> None:
    clock = FakeClock()
    scheduler = _scheduler(clock, workers=("a", "b"), max_prefix_tokens=4096, max_batch_tokens=60)
    pairs = _pairs(0, [30, 31, 32])
    job = _submit(scheduler, pairs, shared_prefix(pairs))
    first = scheduler.schedule("a")
    assert len(first.pairs) == 1
    assert first.new_prefixes == {job.prefix_id}
    assert first.more_waiting
    _finish(scheduler, first, clock)
    second = scheduler.schedule("a")
    assert len(second.pairs) == 1
    assert second.new_prefixes == frozenset()  # worker a holds it now
    other = scheduler.schedule("b")
    assert len(other.pairs) == 1
    assert other.new_prefixes == {job.prefix_id}  # worker b does not
    assert not other.more_waiting
    _finish(scheduler, second, clock)
    assert _state(job) is JobState.RUNNING
    _finish(scheduler, other, clock)
    assert _state(job) is JobState.DONE
    assert scheduler.schedule("a").released == [job.prefix_id]
    assert scheduler.schedule("b").released == [job.prefix_id]


async def test_update_splits_a_pass_out_of_memory_and_fails_a_pair_too_large_alone() -> None:
    clock = FakeClock()
    scheduler = _scheduler(clock, max_prefix_tokens=4096)
    pairs = _pairs(0, [30, 31, 32])
    job = _submit(scheduler, pairs, shared_prefix(pairs))
    output = scheduler.schedule("cpu")
    update = _finish(scheduler, output, clock, error=BatchTooLargeError("out of memory"))
    assert update.record.failed
    assert [len(half) for half in update.retries] == [1, 2]
    assert _state(job) is JobState.RUNNING
    # The failed launch kept no prefix: the half computes it again, and its wait is not
    # reported twice.
    first_half = scheduler.schedule_retry("cpu", update.retries[0])
    assert first_half is not None
    assert first_half.retry
    assert first_half.new_prefixes == {job.prefix_id}
    half_update = _finish(scheduler, first_half, clock, error=BatchTooLargeError("still"))
    assert half_update.record.queue_wait_seconds == ()
    assert half_update.retries == []
    assert _state(job) is JobState.FAILED
    assert isinstance(job.error, PairTooLargeError)
    assert half_update.answers.jobs == [job]
    # The other half's pairs belong to a failed job: nothing is left to run.
    assert scheduler.schedule_retry("cpu", update.retries[1]) is None


async def test_a_non_finite_score_fails_its_request_only() -> None:
    clock = FakeClock()
    scheduler = _scheduler(clock)
    good, bad = _submit(scheduler, _pairs(0, [3])), _submit(scheduler, _pairs(1, [4, 5]))
    output = scheduler.schedule("cpu")
    scores = [math.nan if pair.job is bad and pair.position == 1 else 0.5 for pair in output.pairs]
    update = _finish(scheduler, output, clock, scores=scores)
    assert (good.state, bad.state) == (JobState.DONE, JobState.FAILED)
    assert isinstance(bad.error, NonFiniteScoresError)
    assert bad.error.pairs == 1
    assert update.answers.jobs == [bad, good]


async def test_a_withdrawn_job_leaves_the_queue_and_drops_its_scores_in_flight() -> None:
    clock = FakeClock()
    scheduler = _scheduler(clock, max_prefix_tokens=4096, max_batch_tokens=80)
    pairs = _pairs(0, [30, 31, 32])
    job = _submit(scheduler, pairs, shared_prefix(pairs))
    output = scheduler.schedule("cpu")
    assert 0 < len(output.pairs) < 3
    answers = scheduler.withdraw(job)
    assert answers.jobs == []  # its caller left: nothing to tell
    assert answers.released_prefixes
    assert job.state is JobState.WITHDRAWN
    assert scheduler.queued_pairs == 0
    update = _finish(scheduler, output, clock)
    assert update.answers.jobs == []
    assert job.scores == [0.0] * 3
    assert scheduler.withdraw(job).jobs == []  # a final state stays


async def test_a_lost_device_marks_its_worker_and_fails_its_pass() -> None:
    clock = FakeClock()
    scheduler = _scheduler(clock)
    job = _submit(scheduler, _pairs(0, [3]))
    output = scheduler.schedule("cpu")
    update = _finish(scheduler, output, clock, error=DeviceLostError("cpu: gone"))
    assert scheduler.workers["cpu"].lost == "cpu: gone"
    assert job.state is JobState.FAILED
    assert update.answers.jobs == [job]
    assert scheduler.workers["cpu"].pass_costs.points == [(p, s) for p, s in COSTS]


async def test_admission_counts_the_queue_and_the_prefix_budget() -> None:
    clock = FakeClock()
    first, second = _pairs(0, [3, 4]), _pairs(1, [5, 6, 7])
    budget = shared_prefix(first) + shared_prefix(second) - 1
    scheduler = _scheduler(clock, max_prefix_tokens=budget, max_queued_pairs=5)
    held = _submit(scheduler, first, shared_prefix(first))
    refused = _submit(scheduler, second, shared_prefix(second))
    assert (held.prefix_id is not None, refused.prefix_id) == (True, None)
    assert scheduler.prefixes.tokens_held == shared_prefix(first)
    with pytest.raises(QueueFullError):
        _submit(scheduler, _pairs(2, [1]))


async def test_pairs_from_many_requests_share_forward_passes() -> None:
    requests = _requests(16)
    runner = FakeRunner()
    reports: list[BatchReport] = []
    batcher = _batcher(runner, reports)
    # Queue everything before the worker starts, so batch formation is deterministic.
    jobs = [batcher.submit(pairs) for pairs in requests]
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    assert sum(report.pairs for report in reports) == sum(len(pairs) for pairs in requests)
    # Every request has its own query, so a pair's tokens tell whose it is.
    owner = {tuple(pair): index for index, pairs in enumerate(requests) for pair in pairs}
    assert max(len({owner[tuple(p.tokens)] for p in b.pairs}) for b in runner.batches) > 1
    assert len(reports) < len(requests)
    assert all(len(lengths) * max(lengths) <= 2048 for lengths in runner.lengths)
    assert _exact(requests, [result.scores for result in results])


async def test_batches_are_length_sorted_and_padding_is_low() -> None:
    reports: list[BatchReport] = []
    batcher = _batcher(FakeRunner(), reports)
    jobs = [batcher.submit(pairs) for pairs in _requests(40)]
    batcher.start()
    await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()
    efficiency = sum(r.real_tokens for r in reports) / sum(r.padded_tokens for r in reports)
    assert efficiency > 0.85


async def test_the_runners_geometry_is_the_budgets_unit() -> None:
    """A runner that packs its pairs costs a pass at the sum of their tokens: the same budget
    then takes more pairs per pass than padding would, and the reports count no padding."""

    def packed(shape: PassShape) -> int:
        return shape.tokens

    requests = [_pairs(r, [5 + 40 * (r % 2)]) for r in range(12)]
    padded_runner, packed_runner = FakeRunner(), FakeRunner(pass_tokens=packed)
    results = {}
    for name, runner in (("padded", padded_runner), ("packed", packed_runner)):
        reports: list[BatchReport] = []
        batcher = _batcher(runner, reports, max_batch_tokens=400)
        jobs = [batcher.submit(pairs) for pairs in requests]
        batcher.start()
        await asyncio.gather(*(job.future for job in jobs))
        await batcher.stop()
        results[name] = reports
    assert all(sum(lengths) <= 400 for lengths in packed_runner.lengths)
    assert any(len(lengths) * max(lengths) > 400 for lengths in packed_runner.lengths)
    assert all(r.padded_tokens == r.real_tokens for r in results["packed"])
    assert all(len(lengths) * max(lengths) <= 400 for lengths in padded_runner.lengths)
    assert len(results["packed"]) < len(results["padded"])


async def test_a_failing_batch_fails_only_its_requests() -> None:
    good, bad = _pairs(1, [3]), _pairs(2, [400])
    runner = FakeRunner(fail_on_length=len(bad[0]))
    batcher = Batcher([runner], max_batch_tokens=len(bad[0]), max_queued_pairs=10)
    bad_job, good_job = batcher.submit(bad), batcher.submit(good)
    batcher.start()
    with pytest.raises(RuntimeError, match="injected"):
        await bad_job.future
    assert (await good_job.future).scores == [fake_logit(good[0])]
    later = await batcher.run(good)  # the worker survived
    assert later.scores == [fake_logit(good[0])]
    await batcher.stop()


async def test_queue_limit_refuses_new_work() -> None:
    pairs = _pairs(0, [1, 2, 3])
    batcher = Batcher([FakeRunner()], max_batch_tokens=4096, max_queued_pairs=5)
    first = batcher.submit(pairs)
    with pytest.raises(QueueFullError) as refused:
        batcher.submit(pairs)
    assert (refused.value.queued, refused.value.limit) == (3, 5)
    batcher.start()
    await first.future
    await batcher.stop()
    with pytest.raises(EngineStoppedError):
        batcher.submit(pairs)


async def test_cancelled_request_leaves_the_queue() -> None:
    runner = FakeRunner()
    batcher = Batcher([runner], max_batch_tokens=4096, max_queued_pairs=100)
    task = asyncio.create_task(batcher.run(_pairs(0, [1, 2, 3, 4])))
    await asyncio.sleep(0)  # let the task submit (a scheduling yield, not a timed wait)
    assert batcher.queued_pairs == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.queued_pairs == 0
    batcher.start()
    await batcher.stop()
    assert runner.batches == []


async def test_stop_finishes_accepted_work() -> None:
    batcher = _batcher(FakeRunner())
    jobs = [batcher.submit(pairs) for pairs in _requests(8)]
    batcher.start()
    await batcher.stop()
    assert all(job.future.done() and not job.future.exception() for job in jobs)


async def test_results_resolve_on_the_submitting_loop() -> None:
    runner = FakeRunner()
    batcher = _batcher(runner)
    batcher.start()
    seen: list[int] = []
    job = batcher.submit(_pairs(0, [4]))
    job.future.add_done_callback(lambda _: seen.append(threading.get_ident()))
    await job.future
    assert seen == [threading.get_ident()]
    assert threading.get_ident() not in runner.threads
    await batcher.stop()


# Shared prefixes: held while a request has pairs waiting, within a budget, and counted once.


async def test_each_token_is_counted_once_computed_or_reused() -> None:
    requests = _requests(12)
    prefixes = [shared_prefix(pairs) for pairs in requests]
    runner = FakeRunner()
    reports: list[BatchReport] = []
    batcher = _batcher(runner, reports, max_prefix_tokens=100_000)
    jobs = [batcher.submit(pairs, p) for pairs, p in zip(requests, prefixes, strict=True)]
    assert batcher.prefix_tokens_held == sum(prefixes)
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    pair_tokens = sum(len(pair) for pairs in requests for pair in pairs)
    reused = sum(report.reused_tokens for report in reports)
    # A request of n pairs computes its prefix once and reads it n - 1 times.
    assert reused == sum((len(pairs) - 1) * p for pairs, p in zip(requests, prefixes, strict=True))
    assert sum(report.real_tokens for report in reports) + reused == pair_tokens
    assert all(report.padded_tokens >= report.real_tokens for report in reports)
    # Each prefix computed once, and every one released with its request's last pair.
    new = [prefix_id for batch in runner.batches for prefix_id in batch.new_prefixes]
    assert len(new) == len(set(new)) == sum(1 for p in prefixes if p)
    assert batcher.prefix_tokens_held == 0
    assert await asyncio.to_thread(runner.wait_released, new)
    assert sorted(runner.released) == sorted(new)
    assert runner.prefixes == {}
    assert _exact(requests, [result.scores for result in results])


async def test_each_pass_shares_what_it_computed_with_its_requests() -> None:
    """The per-request shares and the pass's report come from one record: they add up."""
    requests = _requests(6)
    reports: list[BatchReport] = []
    batcher = _batcher(FakeRunner(), reports, max_prefix_tokens=100_000)
    jobs = [batcher.submit(pairs, shared_prefix(pairs)) for pairs in requests]
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()
    shares = [share for result in results for share in result.passes]
    assert sum(share.reused_tokens for share in shares) == sum(r.reused_tokens for r in reports)
    assert sum(share.pairs for share in shares) == sum(r.pairs for r in reports)
    for report in reports:
        mine = [s for s in shares if s.seconds == report.inference_seconds]
        assert {s.batch_pairs for s in mine} == {report.pairs}


async def test_a_prefix_past_the_budget_is_not_held() -> None:
    first, second = _pairs(0, [3, 4]), _pairs(1, [5, 6, 7])
    first_prefix, second_prefix = shared_prefix(first), shared_prefix(second)
    assert first_prefix
    assert second_prefix
    runner = FakeRunner()
    batcher = Batcher(
        [runner],
        max_batch_tokens=2048,
        max_queued_pairs=100,
        max_prefix_tokens=first_prefix + second_prefix - 1,
    )
    held, refused = batcher.submit(first, first_prefix), batcher.submit(second, second_prefix)
    assert (held.prefix_length, refused.prefix_length) == (first_prefix, 0)
    assert refused.prefix_id is None
    assert batcher.prefix_tokens_held == first_prefix
    batcher.start()
    await asyncio.gather(held.future, refused.future)
    await batcher.stop()
    assert batcher.prefix_tokens_held == 0
    assert {p.prefix_id for batch in runner.batches for p in batch.pairs} == {held.prefix_id, None}


def _stream_tokens(shape: PassShape) -> int:
    """A packing runner's geometry: the pairs' own tokens and each prefix once, no padding."""
    return shape.tokens + shape.prefix_tokens


async def test_a_packing_runner_computes_each_prefix_in_every_pass_of_its_request() -> None:
    """A runner that keeps nothing gets every request's prefix in each pass with its pairs:
    reuse counts only the pairs of one pass sharing it, the budget counts each prefix once
    per pass, and no prefix budget refuses a request (nothing is held on the device)."""
    requests = _requests(12)
    prefixes = [shared_prefix(pairs) for pairs in requests]
    runner = FakeRunner(keeps_prefixes=False, pass_tokens=_stream_tokens)
    reports: list[BatchReport] = []
    batcher = _batcher(runner, reports, max_prefix_tokens=1, max_batch_tokens=300)
    jobs = [batcher.submit(pairs, p) for pairs, p in zip(requests, prefixes, strict=True)]
    assert all(job.prefix_id is not None for job, p in zip(jobs, prefixes, strict=True) if p)
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    assert _exact(requests, [result.scores for result in results])
    length_of = {job.prefix_id: job.prefix_length for job in jobs}
    passes_of: dict[int, int] = {}
    for batch, report in zip(runner.batches, reports, strict=True):
        in_pass = {pair.prefix_id for pair in batch.pairs if pair.prefix_id is not None}
        prefix_tokens = sum(length_of[prefix_id] for prefix_id in in_pass)
        own = sum(pair.own_tokens for pair in batch.pairs)
        assert report.padded_tokens == own + prefix_tokens <= 300
        assert report.real_tokens == own + prefix_tokens
        for prefix_id in in_pass:
            passes_of[prefix_id] = passes_of.get(prefix_id, 0) + 1
    pair_tokens = sum(len(pair) for pairs in requests for pair in pairs)
    reused = sum(report.reused_tokens for report in reports)
    assert sum(report.real_tokens for report in reports) + reused == pair_tokens
    assert max(passes_of.values()) > 1, "a request split over passes computes its prefix again"
    assert runner.prefixes == {}


async def test_a_withdrawn_request_releases_its_prefix_on_the_runner() -> None:
    pairs = _pairs(0, [1, 2, 3])
    runner = FakeRunner()
    batcher = _batcher(runner, max_prefix_tokens=4096)
    batcher.start()
    await batcher.run(pairs[:1])  # the worker is up and idle
    runner.gate.clear()
    blocker = batcher.submit(pairs[:1])  # holds the worker at the gate
    job = batcher.submit(pairs, shared_prefix(pairs))
    assert batcher.prefix_tokens_held == shared_prefix(pairs)
    batcher.withdraw(job)
    assert batcher.prefix_tokens_held == 0
    runner.gate.set()
    await blocker.future
    assert job.prefix_id is not None
    assert await asyncio.to_thread(runner.wait_released, [job.prefix_id])
    assert runner.released == [job.prefix_id]
    await batcher.stop()


async def test_a_failing_pass_does_not_keep_a_finished_requests_prefix() -> None:
    """The prefix of a request that is done is released even when the next pass fails."""
    shared, failing = _pairs(0, [3, 4, 5]), _pairs(1, [400])
    runner = FakeRunner(fail_on_length=len(failing[0]))
    batcher = _batcher(runner, max_prefix_tokens=4096)
    batcher.start()
    done = await batcher.run(shared, shared_prefix(shared))
    assert len(done.scores) == 3
    with pytest.raises(RuntimeError, match="injected"):
        await batcher.run(failing)
    await batcher.stop()
    assert runner.prefixes == {}


async def test_a_pass_out_of_memory_computes_its_prefix_again_in_the_halves() -> None:
    """The runner keeps none of a failed pass's new prefixes, so the halves declare them new
    again (the fake runner refuses a prefix it neither holds nor computes)."""
    pairs = _pairs(0, [30, 31, 32, 33])
    prefix = shared_prefix(pairs)
    runner = FakeRunner(capacity=2 * 40)
    batcher = _batcher(runner, max_prefix_tokens=4096)
    batcher.start()
    result = await batcher.run(pairs, prefix)
    await batcher.stop()
    assert result.scores == [fake_logit(pair) for pair in pairs]
    first_half = runner.batches[1]
    assert len(runner.batches[0].pairs) == 4
    assert first_half.new_prefixes == runner.batches[0].new_prefixes != frozenset()


async def test_with_overlapping_passes_the_next_starts_before_the_last_is_awaited() -> None:
    requests = _requests(12)
    runner = FakeRunner(overlaps=True)
    reports: list[BatchReport] = []
    batcher = _batcher(runner, reports, max_prefix_tokens=100_000, max_batch_tokens=512)
    assert batcher.overlapping
    jobs = [batcher.submit(pairs, shared_prefix(pairs)) for pairs in requests]
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    passes = len(runner.batches)
    assert passes > 2
    # Pass k + 1 is launched before pass k's scores are taken, and every pass's are taken.
    assert runner.events[:3] == [("launch", 0), ("launch", 1), ("result", 0)]
    taken = sorted(index for event, index in runner.events if event == "result")
    assert taken == list(range(passes))
    assert len(reports) == passes
    assert _exact(requests, [result.scores for result in results])


def test_the_engine_above_the_runners_and_the_fake_runner_import_no_torch() -> None:
    """What these tests drive loads without torch: only runners and the loader touch it."""
    code = (
        "import sys, reranker_service.engine.rerank_engine, tests.support.fake_runner; "
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))"
    )
    root = ROOT
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
