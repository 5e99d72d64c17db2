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
)
from reranker_service.engine.model import Qwen3ScoringModel
from reranker_service.settings import DEFAULT_INSTRUCTION


class RecordingScorer:
    """The real model, remembering what each forward pass was given."""

    def __init__(self, model: Qwen3ScoringModel, fail_on_length: int | None = None) -> None:
        self._model = model
        self._fail_on_length = fail_on_length
        self.batches: list[list[int]] = []
        self.passes: list[list[tuple[int, ...]]] = []

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        self.batches.append([len(seq) for seq in sequences])
        self.passes.append([tuple(seq) for seq in sequences])
        if self._fail_on_length in {len(seq) for seq in sequences}:
            raise RuntimeError("injected forward failure")
        return self._model.score(sequences)


def _requests(model: Qwen3ScoringModel, count: int) -> list[list[list[int]]]:
    requests = []
    for r in range(count):
        docs = [f"document {d} " + "words " * ((r * 7 + d * 13) % 60) for d in range(1 + r % 5)]
        requests.append(model.encoder.encode(DEFAULT_INSTRUCTION, f"query number {r}", docs))
    return requests


def _batcher(scorer: RecordingScorer, reports: list[BatchReport] | None = None) -> Batcher:
    return Batcher(
        scorer,
        max_batch_tokens=2048,
        overhead_tokens=128,
        max_queued_pairs=1000,
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
    batcher = Batcher(scorer, max_batch_tokens=len(bad[0]), overhead_tokens=0, max_queued_pairs=10)
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
        RecordingScorer(scoring_model), max_batch_tokens=4096, overhead_tokens=0, max_queued_pairs=5
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
    batcher = Batcher(scorer, max_batch_tokens=4096, overhead_tokens=0, max_queued_pairs=100)
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
