"""The batcher forms batches across requests and never mixes up whose score is whose."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from reranker_service.engine.batcher import (
    Batcher,
    BatchReport,
    EngineStoppedError,
    QueueFullError,
    Worker,
)
from reranker_service.engine.model import Qwen3ScoringModel
from reranker_service.engine.pass_cost import PassCostModel
from reranker_service.engine.prefix import SharedPrefix, shared_prefix
from reranker_service.engine.scoring import PendingScores
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.conftest import PassRecorder


class RecordingScorer(PassRecorder):
    """The real model, remembering what each forward pass was given, and failing any pass that
    holds a pair of ``fail_on_length`` tokens."""

    def __init__(self, model: Qwen3ScoringModel, fail_on_length: int | None = None) -> None:
        super().__init__(model)
        self._fail_on_length = fail_on_length

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> list[float]:
        scores = super().score(sequences, prefixes)
        if self._fail_on_length in {len(seq) for seq in sequences}:
            raise RuntimeError("injected forward failure")
        return scores


class DeferredLauncher(PassRecorder):
    """The real model's ``launch``, with each pass's scores taken only when the batcher asks
    for them, and a log of both: the order an asynchronous device would see."""

    def __init__(self, model: Qwen3ScoringModel) -> None:
        super().__init__(model)
        self.events: list[tuple[str, int]] = []

    def launch(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> PendingScores:
        index = sum(1 for event, _ in self.events if event == "launch")
        self.events.append(("launch", index))
        self.passes.append([tuple(sequence) for sequence in sequences])
        return _LoggedScores(self._model.launch(sequences, prefixes), self.events, index)


class _LoggedScores:
    def __init__(self, pending: PendingScores, events: list[tuple[str, int]], index: int) -> None:
        self._pending, self._events, self._index = pending, events, index

    def result(self) -> list[float]:
        self._events.append(("result", self._index))
        return self._pending.result()


def _requests(model: Qwen3ScoringModel, count: int) -> list[list[list[int]]]:
    requests = []
    for r in range(count):
        docs = [f"document {d} " + "words " * ((r * 7 + d * 13) % 60) for d in range(1 + r % 5)]
        requests.append(model.encoder.encode(DEFAULT_INSTRUCTION, f"query number {r}", docs))
    return requests


def _batcher(
    scorer: RecordingScorer,
    reports: list[BatchReport] | None = None,
    *,
    max_prefix_tokens: int = 0,
) -> Batcher:
    return Batcher(
        [Worker("cpu", scorer)],
        max_batch_tokens=2048,
        pass_costs=PassCostModel([(64, 0.002), (128, 0.0025), (1024, 0.01)]),
        max_queued_pairs=1000,
        max_prefix_tokens=max_prefix_tokens,
        observer=reports.append if reports is not None else None,
    )


async def test_pairs_from_many_requests_share_forward_passes(
    scoring_model: Qwen3ScoringModel,
) -> None:
    requests = _requests(scoring_model, 16)
    scorer = RecordingScorer(scoring_model)
    reports: list[BatchReport] = []
    batcher = _batcher(scorer, reports)
    # Queue everything before the worker starts, so batch formation is deterministic.
    jobs = [batcher.submit(seqs) for seqs in requests]
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    total_pairs = sum(len(seqs) for seqs in requests)
    assert sum(report.pairs for report in reports) == total_pairs
    # Every request has its own query, so a pair's tokens tell whose it is.
    owner = {tuple(seq): index for index, seqs in enumerate(requests) for seq in seqs}
    assert max(len({owner[seq] for seq in batch}) for batch in scorer.passes) > 1
    assert len(reports) < len(requests)
    for lengths in scorer.batches:
        assert len(lengths) * max(lengths) <= 2048
    for seqs, result in zip(requests, results, strict=True):
        alone = [scoring_model.score([ids])[0] for ids in seqs]
        assert max(abs(a - b) for a, b in zip(result.scores, alone, strict=True)) <= 1e-5


async def test_batches_are_length_sorted_and_padding_is_low(
    scoring_model: Qwen3ScoringModel,
) -> None:
    requests = _requests(scoring_model, 40)
    reports: list[BatchReport] = []
    batcher = _batcher(RecordingScorer(scoring_model), reports)
    jobs = [batcher.submit(seqs) for seqs in requests]
    batcher.start()
    await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()
    efficiency = sum(r.real_tokens for r in reports) / sum(r.padded_tokens for r in reports)
    assert efficiency > 0.85


async def test_a_failing_batch_fails_only_its_requests(scoring_model: Qwen3ScoringModel) -> None:
    good = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["short"])
    bad = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["much longer " * 300])
    scorer = RecordingScorer(scoring_model, fail_on_length=len(bad[0]))
    batcher = Batcher([Worker("cpu", scorer)], max_batch_tokens=len(bad[0]), max_queued_pairs=10)
    bad_job, good_job = batcher.submit(bad), batcher.submit(good)
    batcher.start()
    with pytest.raises(RuntimeError, match="injected"):
        await bad_job.future
    assert (await good_job.future).scores == pytest.approx(scoring_model.score(good), abs=1e-5)
    later = await batcher.score(good)  # the worker survived
    assert later.scores == pytest.approx(scoring_model.score(good), abs=1e-5)
    await batcher.stop()


async def test_queue_limit_refuses_new_work(scoring_model: Qwen3ScoringModel) -> None:
    seqs = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["a", "b", "c"])
    batcher = Batcher(
        [Worker("cpu", RecordingScorer(scoring_model))], max_batch_tokens=4096, max_queued_pairs=5
    )
    first = batcher.submit(seqs)
    with pytest.raises(QueueFullError) as refused:
        batcher.submit(seqs)
    assert (refused.value.queued, refused.value.limit) == (3, 5)
    batcher.start()
    await first.future
    await batcher.stop()
    with pytest.raises(EngineStoppedError):
        batcher.submit(seqs)


async def test_cancelled_request_leaves_the_queue(scoring_model: Qwen3ScoringModel) -> None:
    seqs = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["a", "b", "c", "d"])
    scorer = RecordingScorer(scoring_model)
    batcher = Batcher([Worker("cpu", scorer)], max_batch_tokens=4096, max_queued_pairs=100)
    task = asyncio.create_task(batcher.score(seqs))
    await asyncio.sleep(0)  # let the task submit (a scheduling yield, not a timed wait)
    assert batcher.queued_pairs == 4
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert batcher.queued_pairs == 0
    batcher.start()
    await batcher.stop()
    assert scorer.batches == []


async def test_stop_finishes_accepted_work(scoring_model: Qwen3ScoringModel) -> None:
    requests = _requests(scoring_model, 8)
    batcher = _batcher(RecordingScorer(scoring_model))
    jobs = [batcher.submit(seqs) for seqs in requests]
    batcher.start()
    await batcher.stop()
    assert all(job.future.done() and not job.future.exception() for job in jobs)


async def test_results_resolve_on_the_submitting_loop(scoring_model: Qwen3ScoringModel) -> None:
    seqs = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["x"])
    batcher = _batcher(RecordingScorer(scoring_model))
    batcher.start()
    seen: list[int] = []
    job = batcher.submit(seqs)
    job.future.add_done_callback(lambda _: seen.append(threading.get_ident()))
    await job.future
    assert seen == [threading.get_ident()]
    await batcher.stop()


# Shared prefixes: held while a request has pairs waiting, within a budget, and counted once.


async def test_each_token_is_counted_once_computed_or_reused(
    scoring_model: Qwen3ScoringModel,
) -> None:
    requests = _requests(scoring_model, 12)
    prefixes = [shared_prefix(seqs) for seqs in requests]
    reports: list[BatchReport] = []
    batcher = _batcher(RecordingScorer(scoring_model), reports, max_prefix_tokens=100_000)
    jobs = [batcher.submit(seqs, prefix) for seqs, prefix in zip(requests, prefixes, strict=True)]
    assert batcher.prefix_tokens_held == sum(len(p) for p in prefixes if p is not None)
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    pair_tokens = sum(len(seq) for seqs in requests for seq in seqs)
    reused = sum(report.reused_tokens for report in reports)
    # A request of n pairs computes its prefix once and reads it n - 1 times.
    assert reused == sum(
        (len(seqs) - 1) * len(p) for seqs, p in zip(requests, prefixes, strict=True) if p
    )
    assert sum(report.real_tokens for report in reports) + reused == pair_tokens
    assert all(report.padded_tokens >= report.real_tokens for report in reports)
    # Released with the last pair: nothing held, no keys and values kept.
    assert batcher.prefix_tokens_held == 0
    assert all(p is None or not p.states for p in prefixes)
    for seqs, result in zip(requests, results, strict=True):
        alone = [scoring_model.score([ids])[0] for ids in seqs]
        assert max(abs(a - b) for a, b in zip(result.scores, alone, strict=True)) <= 1e-5


async def test_a_prefix_past_the_budget_is_not_held(scoring_model: Qwen3ScoringModel) -> None:
    first, second = _requests(scoring_model, 2)[0], _requests(scoring_model, 7)[6]
    first_prefix, second_prefix = shared_prefix(first + first), shared_prefix(second)
    assert first_prefix is not None
    assert second_prefix is not None
    scorer = RecordingScorer(scoring_model)
    batcher = Batcher(
        [Worker("cpu", scorer)],
        max_batch_tokens=2048,
        max_queued_pairs=100,
        max_prefix_tokens=len(first_prefix) + len(second_prefix) - 1,
    )
    held, refused = batcher.submit(first, first_prefix), batcher.submit(second, second_prefix)
    assert (held.prefix, refused.prefix) == (first_prefix, None)
    assert batcher.prefix_tokens_held == len(first_prefix)
    batcher.start()
    await asyncio.gather(held.future, refused.future)
    await batcher.stop()
    assert batcher.prefix_tokens_held == 0


async def test_a_withdrawn_request_releases_its_prefix(scoring_model: Qwen3ScoringModel) -> None:
    seqs = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "q", ["a", "b", "c"])
    prefix = shared_prefix(seqs)
    assert prefix is not None
    prefix.states["cpu"] = "keys and values"  # as if a pass had computed it
    batcher = _batcher(RecordingScorer(scoring_model), max_prefix_tokens=4096)
    job = batcher.submit(seqs, prefix)
    assert batcher.prefix_tokens_held == len(prefix)
    batcher.withdraw(job)
    assert batcher.prefix_tokens_held == 0
    assert not prefix.states


async def test_with_a_launcher_the_next_pass_starts_before_the_last_is_awaited(
    scoring_model: Qwen3ScoringModel,
) -> None:
    requests = _requests(scoring_model, 12)
    prefixes = [shared_prefix(seqs) for seqs in requests]
    launcher = DeferredLauncher(scoring_model)
    reports: list[BatchReport] = []
    batcher = Batcher(
        [Worker("cpu", launcher, launcher=launcher)],
        max_batch_tokens=512,
        max_queued_pairs=1000,
        max_prefix_tokens=100_000,
        observer=reports.append,
    )
    assert batcher.overlapping
    jobs = [batcher.submit(seqs, prefix) for seqs, prefix in zip(requests, prefixes, strict=True)]
    batcher.start()
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()

    passes = len(launcher.passes)
    assert passes > 2
    # Pass k + 1 is launched before pass k's scores are taken, and every pass's are taken.
    assert launcher.events[:3] == [("launch", 0), ("launch", 1), ("result", 0)]
    assert sorted(index for event, index in launcher.events if event == "result") == list(
        range(passes)
    )
    assert len(reports) == passes
    # Prefixes computed by one pass are read by the next before the first's scores are taken.
    for seqs, result in zip(requests, results, strict=True):
        alone = [scoring_model.score([ids])[0] for ids in seqs]
        assert max(abs(a - b) for a, b in zip(result.scores, alone, strict=True)) <= 1e-5
