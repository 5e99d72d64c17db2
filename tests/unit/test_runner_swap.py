"""The batcher's part in bringing a compiled runner in: work run on a worker's own thread between
two passes (none in flight, overlapping or not), and a runner swapped at a pass boundary while
requests wait, their prefixes computed anew on the runner that takes over. The fake runner: no
torch."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from structlog.testing import capture_logs

from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.jobs import EngineStoppedError
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.upgrade import RunnerUpgrader
from tests.support.fake_runner import FakeRunner, fake_logit

PROMPT = list(range(100, 140))


def _request(query: int, documents: int) -> list[list[int]]:
    return [[*PROMPT, 1000 + query, *range(3000 + d, 3010 + d)] for d in range(documents)]


def _batcher(runner: FakeRunner) -> Batcher:
    return Batcher(
        [runner],
        max_batch_tokens=256,  # a request of 8 pairs takes two passes or more
        pass_costs=PassCostModel([(64, 0.002), (1024, 0.01)]),
        max_queued_pairs=1000,
        max_prefix_tokens=4096,
    )


async def test_work_for_the_worker_runs_on_its_thread_with_no_pass_in_flight() -> None:
    runner = FakeRunner(overlaps=True)
    batcher = _batcher(runner)
    batcher.start()
    runner.gate.clear()  # the first pass waits, so that the call is queued behind it
    job = batcher.submit(_request(0, 8), prefix_length=len(PROMPT))
    threads: list[int] = []

    def call() -> str:
        threads.append(threading.get_ident())
        runner.events.append(("call", -1))
        return "done"

    future = batcher.run_on_worker("cpu", call)
    runner.gate.set()
    assert await asyncio.wrap_future(future) == "done"
    await job.future
    await batcher.stop()
    assert threads[0] in runner.threads  # the worker's own thread
    call_at = runner.events.index(("call", -1))
    launched = [index for event, index in runner.events[:call_at] if event == "launch"]
    finished = [index for event, index in runner.events[:call_at] if event == "result"]
    assert launched == finished, "a pass was in flight when the call ran"


async def test_a_swapped_in_runner_serves_the_passes_after_it_and_computes_its_prefixes() -> None:
    old, new = FakeRunner(), FakeRunner()
    batcher = _batcher(old)
    batcher.start()
    old.gate.clear()
    requests = [_request(query, 8) for query in range(3)]
    jobs = [batcher.submit(pairs, prefix_length=len(PROMPT)) for pairs in requests]
    swapped = batcher.install_runner("cpu", new, [(64, 0.001), (1024, 0.005)])
    old.gate.set()
    await asyncio.wrap_future(swapped)
    results = await asyncio.gather(*(job.future for job in jobs))
    await batcher.stop()
    assert batcher.runner_of("cpu") is new
    assert new.batches, "nothing ran on the runner swapped in"
    # The new runner held no prefix: every prefix a pass of it read was computed in that pass
    # (the fake runner fails a pass that reads one it neither holds nor computes).
    for batch in new.batches[:1]:
        assert {pair.prefix_id for pair in batch.pairs} <= set(batch.new_prefixes)
    for pairs, result in zip(requests, results, strict=True):
        assert result.scores == [fake_logit(pair) for pair in pairs]
    # The worker's cost curve is the new runner's (kept current by its passes since).
    assert (1024.0, 0.005) in batcher.pass_costs.points
    assert new.threads
    assert new.threads <= old.threads  # bound to the same worker thread


async def test_work_for_a_stopped_worker_fails_instead_of_waiting() -> None:
    batcher = _batcher(FakeRunner())
    batcher.start()
    await batcher.stop()
    with pytest.raises(EngineStoppedError):
        batcher.run_on_worker("cpu", lambda: None).result(timeout=5)


def test_before_the_workers_start_it_runs_on_the_calling_thread() -> None:
    batcher = _batcher(FakeRunner())
    assert batcher.run_on_worker("cpu", threading.get_ident).result(timeout=5) == (
        threading.get_ident()
    )


class _HeldUpgrade:
    """A ``RunnerUpgrade`` whose build holds (as one bucket's compile does, which cannot be
    interrupted) until the test lets it go."""

    foreground = False
    probe = ()
    score_bound = 1e-4

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def build(self) -> Any:
        self.entered.set()
        self.release.wait(timeout=60)
        raise RuntimeError("let go")

    def reference(self) -> Any:
        raise AssertionError("never reached")


async def test_stopping_waits_a_bounded_time_for_a_compile_that_cannot_be_interrupted() -> None:
    batcher = _batcher(FakeRunner())
    held = _HeldUpgrade()
    upgrader = RunnerUpgrader(
        batcher, [("cpu", held)], pass_cost_token_ids=[1, 2], max_batch_tokens=256
    )
    batcher.start()
    upgrader.start_background()
    assert held.entered.wait(timeout=10)
    with capture_logs() as logs:
        upgrader.stop(timeout=0.05)
    assert [entry["event"] for entry in logs] == ["runner_compile_abandoned"]
    await batcher.stop()  # the engine stops on without it
    held.release.set()
    assert upgrader.wait(timeout=10)
    assert upgrader.statuses()[0].compile.state == "off"  # cancelled, not a fallback
