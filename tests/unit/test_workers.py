"""Several workers, one queue: ``RERANKER_DEVICE=cpu,cpu`` serves with two CPU workers, each with
its replica and thread, fed from the one length-sorted queue."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import (
    ModelRunner,
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.engine.scheduler.batcher import Batcher
from reranker_service.engine.scheduler.pass_cost import PassCostModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.exposition import scrape
from tests.support.serving import (
    GatedModel,
    RunnerWrapper,
    asgi_client,
    logits,
    make_settings,
    sequences_of,
)

WAIT_SECONDS = 30


class Meets(RunnerWrapper):
    """A replica whose first pass, once armed, waits at ``barrier`` for the other worker's:
    the barrier breaks (and the pass fails) unless both workers run a pass at the same time.
    With ``fail_first``, that pass then fails; with ``hold``, it waits for the event too."""

    def __init__(
        self,
        model: ServedModel,
        runner: ModelRunner,
        barrier: threading.Barrier,
        *,
        fail_first: bool = False,
        hold: threading.Event | None = None,
    ) -> None:
        super().__init__(model, runner)
        self.barrier = barrier
        self.fail_first = fail_first
        self.hold = hold
        self.armed = False
        self.entered = threading.Event()
        self.passes: list[list[tuple[int, ...]]] = []

    def launch(self, batch: PassBatch) -> PendingScores:
        first = self.armed and not self.passes
        if self.armed:
            self.passes.append(sequences_of(batch))
        if first:
            self.entered.set()
            self.barrier.wait(WAIT_SECONDS)
            if self.hold is not None:
                assert self.hold.wait(WAIT_SECONDS)
            if self.fail_first:
                raise RuntimeError("injected failure on this worker")
        return super().launch(batch)


@pytest.fixture
def replicas(cpu_replicas: ServedModel) -> ServedModel:
    return cpu_replicas


def _meeting(model: ServedModel, barrier: threading.Barrier, **options: Any) -> list[Meets]:
    return [Meets(model, runner, barrier, **options) for runner in model.runners]


def _served(model: ServedModel, runners: Sequence[ModelRunner]) -> ServedModel:
    return ServedModel(model.encoder, tuple(runners))


def _batcher(workers: Sequence[Meets]) -> Batcher:
    return Batcher(
        workers,
        max_batch_tokens=4096,
        max_queued_pairs=1000,
        pass_costs=PassCostModel([(64, 0.002), (128, 0.0025), (1024, 0.01)]),
    )


def _pairs(model: ServedModel, query: str) -> list[list[int]]:
    return model.encoder.encode(DEFAULT_INSTRUCTION, query, ["first document", "second one"])


async def test_sixteen_clients_get_exact_scores_from_both_workers(
    checkpoint: Path, replicas: ServedModel
) -> None:
    workers = _meeting(replicas, threading.Barrier(2))
    # Passes of at most 512 tokens: a worker never takes the whole queue, so the other is woken.
    settings = make_settings(checkpoint, device="cpu,cpu", max_length=512, max_batch_tokens=512)
    app = create_app(settings, model=_served(replicas, workers))
    queries = [f"question {n} about " + "many words " * (n % 5) for n in range(16)]
    documents = ["Paris is in France.", "", "a much longer document " * 12, "中文 🙂"]
    async with asgi_client(app) as http:
        for worker in workers:
            worker.armed = True
        responses = await asyncio.gather(
            *(http.post("/rerank", json={"query": q, "documents": documents}) for q in queries)
        )
        info = (await http.get("/info")).json()
        exposition = await scrape(http)
    assert [response.status_code for response in responses] == [200] * len(queries)
    assert all(worker.passes for worker in workers), "a worker took no pass"
    model = replicas
    for query, response in zip(queries, responses, strict=True):
        sequences = model.encoder.encode(DEFAULT_INSTRUCTION, query, documents)
        alone = [probability(logits(model, [sequence])[0]) for sequence in sequences]
        served = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
        assert max(abs(served[i] - score) for i, score in enumerate(alone)) <= 1e-5
    assert [device["name"] for device in info["devices"]] == ["cpu:0", "cpu:1"]
    assert info["device"] == "cpu:0,cpu:1"
    assert {s.labels["device"] for s in exposition.samples("reranker_model_info")} == {
        "cpu:0",
        "cpu:1",
    }
    for device in ("cpu:0", "cpu:1"):
        assert exposition.histogram("reranker_batch_size", device=device).count >= 1
        assert exposition.histogram("reranker_inference_seconds", device=device).count >= 1


async def test_a_failing_worker_fails_only_its_batch_and_the_other_keeps_serving(
    replicas: ServedModel,
) -> None:
    barrier = threading.Barrier(2)
    first_runner, second_runner = replicas.runners
    healthy = Meets(replicas, first_runner, barrier)
    failing = Meets(replicas, second_runner, barrier, fail_first=True)
    batcher = _batcher([healthy, failing])
    for worker in (healthy, failing):
        worker.armed = True
    batcher.start()
    try:
        first = batcher.submit(_pairs(replicas, "first"))
        # One worker holds the first request at the barrier; the second goes to the other.
        assert await asyncio.to_thread(_either_entered, healthy, failing)
        second = batcher.submit(_pairs(replicas, "second"))
        outcomes = await asyncio.gather(first.future, second.future, return_exceptions=True)
        failed = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert [str(error) for error in failed] == ["injected failure on this worker"]
        # The failure was one batch's: both workers serve what comes next.
        later = [batcher.submit(_pairs(replicas, f"later {n}")) for n in range(8)]
        results = await asyncio.gather(*(job.future for job in later))
    finally:
        await batcher.stop()
    assert all(len(result.scores) == 2 for result in results)
    assert len(failing.passes) >= 1
    assert len(healthy.passes) >= 1


def _either_entered(*workers: Meets | GatedModel) -> bool:
    """Wait until one of ``workers`` is in a pass."""
    return _polled(lambda: any(worker.entered.is_set() for worker in workers))


def _polled(condition: Callable[[], bool]) -> bool:
    """Wait (bounded) for a condition the test cannot be told about."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


async def test_the_drain_waits_for_both_workers(replicas: ServedModel) -> None:
    hold = threading.Event()
    workers = _meeting(replicas, threading.Barrier(2), hold=hold)
    batcher = _batcher(workers)
    for worker in workers:
        worker.armed = True
    batcher.start()
    first = batcher.submit(_pairs(replicas, "first"))
    assert await asyncio.to_thread(_either_entered, *workers)
    second = batcher.submit(_pairs(replicas, "second"))
    assert await asyncio.to_thread(lambda: all(w.entered.wait(WAIT_SECONDS) for w in workers))
    stopping = asyncio.create_task(batcher.stop())
    # Both workers are inside a pass: the drain cannot be over.
    done, _ = await asyncio.wait([stopping], timeout=0.2)
    assert not done
    hold.set()
    await asyncio.wait_for(stopping, WAIT_SECONDS)
    assert first.future.done()
    assert second.future.done()
    assert len(first.future.result().scores) == len(second.future.result().scores) == 2


async def _hold_both_workers(
    http: Any, gated: Sequence[GatedModel], payload: dict[str, Any]
) -> list[asyncio.Task[Any]]:
    """Two requests whose passes each hold one worker at its closed gate. A held worker stays
    held whatever happens to its request, so nothing here races a deadline."""
    for model in gated:
        model.gate.clear()
        model.entered.clear()
    held = [asyncio.create_task(http.post("/rerank", json=payload))]
    assert await asyncio.to_thread(_either_entered, *gated)
    held.append(asyncio.create_task(http.post("/rerank", json=payload)))
    assert await asyncio.to_thread(lambda: all(m.entered.wait(WAIT_SECONDS) for m in gated))
    return held


async def test_a_full_queue_with_both_workers_busy_refuses_at_once(
    checkpoint: Path, replicas: ServedModel
) -> None:
    """Both workers held in a pass, the queue full: a new request gets 429 at once, and the
    others are all answered once the workers move on."""
    gated = [GatedModel(replicas, runner) for runner in replicas.runners]
    settings = make_settings(checkpoint, device="cpu,cpu", max_documents=4, max_queued_pairs=4)
    app = create_app(settings, model=_served(replicas, gated))
    payload = {"query": "q", "documents": ["one", "two", "three", "four"]}
    async with asgi_client(app) as http:
        engine = app.state.lifecycle.engine
        held = await _hold_both_workers(http, gated, payload)
        queued = asyncio.create_task(http.post("/rerank", json=payload))
        assert await asyncio.to_thread(_polled, lambda: engine.queued_pairs == 4)
        refused = await http.post("/rerank", json={"query": "q", "documents": ["five"]})
        for model in gated:
            model.gate.set()
        answers = await asyncio.gather(*held, queued)
        assert engine.queued_pairs == 0
    assert refused.status_code == 429
    assert [answer.status_code for answer in answers] == [200, 200, 200]


async def test_at_the_deadline_waiting_requests_get_504_and_leave_the_queue(
    checkpoint: Path, replicas: ServedModel
) -> None:
    """Both workers held in a pass: at the request deadline every request gets 504, in a pass
    or in the queue (the third, whose pairs no worker could take), and its queued pairs leave
    the queue. No step has to beat the deadline: whichever way the requests time out, each
    ends in 504 and nothing stays queued."""
    gated = [GatedModel(replicas, runner) for runner in replicas.runners]
    settings = make_settings(
        checkpoint,
        device="cpu,cpu",
        max_documents=4,
        max_queued_pairs=4,
        request_timeout_seconds=0.5,
    )
    app = create_app(settings, model=_served(replicas, gated))
    payload = {"query": "q", "documents": ["one", "two", "three", "four"]}
    async with asgi_client(app) as http:
        engine = app.state.lifecycle.engine
        held = await _hold_both_workers(http, gated, payload)
        queued = await http.post("/rerank", json=payload)
        answers = await asyncio.gather(*held)
        assert engine.queued_pairs == 0
        for model in gated:
            model.gate.set()
        after = await http.post("/rerank", json=payload)
    assert [answer.status_code for answer in [*answers, queued]] == [504, 504, 504]
    assert after.status_code == 200


async def test_two_cpu_workers_start_from_the_settings(checkpoint: Path) -> None:
    """The whole path from ``RERANKER_DEVICE=cpu,cpu``: the lifespan loads both replicas."""
    app = create_app(make_settings(checkpoint, device="cpu,cpu"))
    async with asgi_client(app) as http:
        response = await http.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
        info = (await http.get("/info")).json()
    assert response.status_code == 200
    assert [device["name"] for device in info["devices"]] == ["cpu:0", "cpu:1"]
    assert [device["uuid"] for device in info["devices"]] == [None, None]
