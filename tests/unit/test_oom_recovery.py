"""Out of device memory, a batch is retried in halves, and the failed pass's memory must be free
before the halves run: otherwise a pair that fits alone can still fail. The one home of the
out-of-memory tests above the scheduler (its own steps are tested in test_batcher.py, a real
CUDA allocator in test_gpu.py): the model's seam, the engine with one and two workers, the HTTP
answer, and what the request reports."""

from __future__ import annotations

import asyncio
import threading
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from reranker_service.app import load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    ModelRunner,
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.jobs import PairTooLargeError
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.exposition import Exposition
from tests.support.serving import AppFactory, RunnerWrapper, asgi_client, logits, make_settings

DOCUMENTS = ["one short document", "another one", "a third document here", "and a fourth"]
QUERY = "which fruit is yellow"
DOCS = ["bananas are yellow", "the sky is blue", "grass is green", "lemons are yellow too"]


def _batcher(runner: ModelRunner) -> Batcher:
    """One worker whose pass cost makes one pass of all the test's pairs the best batch."""
    costs = PassCostModel([(64, 0.002), (128, 0.0025), (1024, 0.01)])
    return Batcher([runner], max_batch_tokens=4096, max_queued_pairs=100, pass_costs=costs)


def _padded_runner(model: ServedModel) -> PaddedRunner:
    runner = model.runner
    assert isinstance(runner, PaddedRunner)
    return runner


class FailsOnceHoldingMemory(RunnerWrapper):
    """The real model; its first pass takes a tensor (its "activations") and then runs out of
    memory with that tensor alive in its frame. Every later pass records whether the tensor
    was freed by the time it started."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__(model)
        self.failed_pass_memory: weakref.ref[torch.Tensor] | None = None
        self.freed_before_retry: list[bool] = []

    def launch(self, batch: PassBatch) -> PendingScores:
        if self.failed_pass_memory is None:
            activations = torch.ones(len(batch.pairs), 1 << 16)
            self.failed_pass_memory = weakref.ref(activations)
            raise BatchTooLargeError(f"out of memory with {activations.numel()} floats taken")
        self.freed_before_retry.append(self.failed_pass_memory() is None)
        return super().launch(batch)


async def test_the_batcher_drops_a_failed_pass_before_retrying_its_halves(
    scoring_model: ServedModel,
) -> None:
    scorer = FailsOnceHoldingMemory(scoring_model)
    batcher = _batcher(scorer)
    sequences = scoring_model.encoder.encode(DEFAULT_INSTRUCTION, "query", DOCUMENTS)
    job = batcher.submit(sequences)
    batcher.start()
    result = await job.future
    await batcher.stop()
    assert scorer.freed_before_retry == [True, True], "a half ran with the failed pass alive"
    assert result.scores == pytest.approx(logits(scoring_model, sequences), abs=1e-5)


class OutOfMemoryOnce(torch.nn.Module):
    """A decoder whose first forward allocates and then raises torch's own out-of-memory
    error, as the CUDA caching allocator does; later forwards run the real decoder."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.failed_pass_memory: weakref.ref[torch.Tensor] | None = None
        self.freed_before_retry: list[bool] = []
        self.thread_ids: list[int] = []

    def forward(self, **inputs: Any) -> Any:
        self.thread_ids.append(threading.get_ident())
        if self.failed_pass_memory is None:
            activations = torch.ones(inputs["input_ids"].shape[0], 1 << 16)
            self.failed_pass_memory = weakref.ref(activations)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.freed_before_retry.append(self.failed_pass_memory() is None)
        return self.decoder(**inputs)


async def test_the_model_lets_go_of_an_out_of_memory_pass(checkpoint: Path) -> None:
    """The real model's seam: torch's error inside the decoder becomes ``BatchTooLargeError``
    without keeping the failed pass's frames, so the halves run with its memory free."""
    model = load_single_device_model(load_options(make_settings(checkpoint)))
    runner = _padded_runner(model)
    decoder = OutOfMemoryOnce(runner._backbone)
    runner._backbone = decoder
    batcher = _batcher(runner)
    sequences = model.encoder.encode(DEFAULT_INSTRUCTION, "query", DOCUMENTS)
    job = batcher.submit(sequences)
    batcher.start()
    result = await asyncio.wait_for(job.future, 60)
    await batcher.stop()
    assert decoder.freed_before_retry == [True, True], "a half ran with the failed pass alive"
    runner._backbone = decoder.decoder
    assert result.scores == pytest.approx(logits(model, sequences), abs=1e-5)


def test_the_error_carries_no_trace_of_the_failed_pass(checkpoint: Path) -> None:
    model = load_single_device_model(load_options(make_settings(checkpoint)))
    runner = _padded_runner(model)
    runner._backbone = OutOfMemoryOnce(runner._backbone)
    sequences = model.encoder.encode(DEFAULT_INSTRUCTION, "query", DOCUMENTS)
    with pytest.raises(BatchTooLargeError, match="CUDA out of memory") as raised:
        logits(model, sequences)
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None


class OutOfMemoryAbove(RunnerWrapper):
    """The real model on a pretend device that fits ``capacity`` padded tokens per pass: a
    bigger batch fails the way ``PaddedRunner`` reports a CUDA out-of-memory."""

    def __init__(
        self, model: ServedModel, capacity: int, runner: ModelRunner | None = None
    ) -> None:
        super().__init__(model, runner)
        self.capacity = capacity
        self.passes: list[int] = []
        self._lock = threading.Lock()

    def launch(self, batch: PassBatch) -> PendingScores:
        own = [pair.own_tokens for pair in batch.pairs]
        padded = len(own) * max(own)
        with self._lock:
            self.passes.append(len(own))
        if padded > self.capacity:
            raise BatchTooLargeError(f"CUDA out of memory: {padded} tokens")
        return super().launch(batch)


@pytest.mark.parametrize("workers", [1, 2])
async def test_out_of_memory_splits_batches_and_fails_only_what_cannot_fit(
    scoring_model: ServedModel, cpu_replicas: ServedModel, workers: int
) -> None:
    """With two workers, each splits the passes it ran out of memory on."""
    encoder = scoring_model.encoder
    short_docs = [f"short document {n}" for n in range(12)]
    long_doc = "a long document " * 60
    longest_pair = len(encoder.encode("i", QUERY, [long_doc])[0])
    one_short_pair = max(len(ids) for ids in encoder.encode("i", QUERY, short_docs))
    # Room for a few short pairs at a time, never for the long one.
    capacity = 4 * one_short_pair
    assert longest_pair > capacity
    replicas = scoring_model if workers == 1 else cpu_replicas
    # The warm-up fits.
    models = [OutOfMemoryAbove(replicas, 10**9, runner) for runner in replicas.runners]
    engine = RerankEngine(
        ServedModel(encoder, tuple(models)),
        EngineConfig(None, 10_000, largest_request_pairs=1000, tokenizer_threads=1),
    )
    await engine.start()
    for model in models:
        model.capacity = capacity
        model.passes.clear()
    try:
        results = await asyncio.gather(
            engine.rerank("i", QUERY, short_docs),
            engine.rerank("i", QUERY, [short_docs[0], long_doc]),
            engine.rerank("i", QUERY, short_docs[:5]),
            return_exceptions=True,
        )
    finally:
        await engine.stop()
    fine, too_long, also_fine = results
    assert isinstance(too_long, PairTooLargeError)
    assert too_long.tokens == longest_pair
    for outcome, docs in ((fine, short_docs), (also_fine, short_docs[:5])):
        assert not isinstance(outcome, BaseException)
        alone = [
            probability(logits(scoring_model, encoder.encode("i", QUERY, [doc]))[0]) for doc in docs
        ]
        assert outcome.scores == pytest.approx(alone, abs=1e-4)
    # The first passes were too big and were split.
    assert max(size for model in models for size in model.passes) > 4


async def test_out_of_memory_is_503_oom_and_the_server_stays_up(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    model = OutOfMemoryAbove(scoring_model, capacity=10**9)
    app = app_factory(model=model)
    pairs = scoring_model.encoder.encode(app.state.settings.default_instruction, QUERY, DOCS)
    capacity = len(DOCS) * max(len(ids) for ids in pairs)
    async with asgi_client(app) as http:
        model.capacity = capacity
        failed = await http.post("/rerank", json={"query": QUERY, "documents": ["x " * capacity]})
        fine = await http.post("/rerank", json={"query": QUERY, "documents": DOCS})
        health = await http.get("/health")
    assert failed.status_code == 503
    error = failed.json()["error"]
    assert (error["type"], error["field"]) == ("oom", "documents")
    assert "does not fit" in error["message"]
    assert (fine.status_code, health.status_code) == (200, 200)
    assert (
        Exposition.of(app.state.metrics.registry).value("reranker_request_errors_total", type="oom")
        == 1
    )


def test_a_torch_out_of_memory_becomes_batch_too_large(
    scoring_model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = scoring_model.runner
    assert isinstance(runner, PaddedRunner)
    backbone = runner._backbone

    def exhausted(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backbone, "forward", exhausted)
    with pytest.raises(BatchTooLargeError, match="Tried to allocate"):
        logits(scoring_model, [[1, 2, 3]])


class ArmedOutOfMemoryOnce(RunnerWrapper):
    """The real model, whose first pass of more than one pair once armed runs out of device
    memory."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__(model)
        self.armed = self.failed = False

    def launch(self, batch: PassBatch) -> PendingScores:
        if self.armed and not self.failed and len(batch.pairs) > 1:
            self.failed = True
            raise BatchTooLargeError("out of memory")
        return super().launch(batch)


async def test_compute_tokens_count_a_pass_redone_in_halves_once(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    """A pass that ran out of memory computed nothing its halves did not compute again: the
    request computed what the same request computes in one pass."""
    runner = ArmedOutOfMemoryOnce(scoring_model)
    payload = {"query": "capital?", "documents": ["Paris.", "Berlin is in Germany.", "A", "B c"]}
    async with asgi_client(app_factory(model=runner)) as http:
        runner.armed = True  # after the start-up's passes
        halved = await http.post("/v2/rerank", json=payload)
        whole = await http.post("/v2/rerank", json=payload)
    assert runner.failed
    scores = [
        {result["index"]: result["relevance_score"] for result in answer.json()["results"]}
        for answer in (halved, whole)
    ]
    assert scores[0] == pytest.approx(scores[1], abs=1e-5)
    assert int(halved.headers["x-compute-tokens"]) == int(whole.headers["x-compute-tokens"]) > 0
