"""Out of device memory, a batch is retried in halves, and the failed pass's memory must be free
before the halves run: otherwise a pair that fits alone can still fail."""

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
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    ModelRunner,
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.conftest import RunnerWrapper, logits, make_settings

DOCUMENTS = ["one short document", "another one", "a third document here", "and a fourth"]


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
