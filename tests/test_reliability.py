"""Faults: requests that time out, clients that leave, and a device that runs out of memory.
Nothing accepted is lost, nothing abandoned keeps its place in the queue, the server stays up."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import torch

from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import (
    BatchTooLargeError,
    ModelRunner,
    PassBatch,
    PendingScores,
    ServedModel,
)
from reranker_service.engine.scheduler.jobs import PairTooLargeError
from reranker_service.engine.scoring import probability
from reranker_service.local_server import serve_in_thread
from tests.conftest import AppFactory, GatedModel, RunnerWrapper, asgi_client, logits
from tests.exposition import Exposition

QUERY = "which fruit is yellow"
DOCS = ["bananas are yellow", "the sky is blue", "grass is green", "lemons are yellow too"]


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    """Poll a condition the test cannot be told about (bounded)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.005)


def _errors(app: Any, error_type: str) -> float:
    return Exposition.of(app.state.metrics.registry).value(
        "reranker_request_errors_total", type=error_type
    )


async def test_timeout_answers_504_and_frees_the_queue(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    gated = GatedModel(scoring_model)
    app = app_factory(model=gated, request_timeout_seconds=0.5)
    payload = {"query": QUERY, "documents": DOCS}
    async with asgi_client(app) as http:
        engine = app.state.lifecycle.engine
        gated.gate.clear()
        gated.entered.clear()
        # The first request's pass is held at the gate; the second waits in the queue.
        in_pass = asyncio.create_task(http.post("/rerank", json=payload))
        await asyncio.to_thread(gated.entered.wait, 30)
        queued = asyncio.create_task(http.post("/v2/rerank", json=payload))
        held, waiting = await asyncio.gather(in_pass, queued)
        # Both answered at their deadline, while the worker is still held; the queued pairs
        # are gone from the queue.
        assert engine.queued_pairs == 0
        gated.gate.set()
        after = await http.post("/rerank", json=payload)
    for response in (held, waiting):
        assert response.status_code == 504
        error = response.json()["error"]
        assert (error["type"], error["limit"]) == ("timeout", 0.5)
        assert response.headers["retry-after"] == "1"
        assert float(response.headers["x-total-time"]) >= 500
    assert after.status_code == 200
    assert _errors(app, "timeout") == 2


def _raw_post(port: int, path: str, document: dict[str, Any]) -> socket.socket:
    """Send a request on a socket of our own, so the test can hang up on it."""
    body = json.dumps(document).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


def _read_status(sock: socket.socket) -> int:
    with sock, sock.makefile("rb") as stream:
        return int(stream.readline().split()[1])


def test_a_client_that_hangs_up_loses_its_queued_pairs(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    gated = GatedModel(scoring_model)
    app = app_factory(model=gated)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        _wait_until(lambda: http.get("/ready").status_code == 200, "the service is ready")
        port = int(url.rsplit(":", 1)[1])
        engine = app.state.lifecycle.engine
        gated.gate.clear()
        gated.entered.clear()
        try:
            # One document: its one pair is in the held pass, whatever the batch policy
            # measured at start-up (a longer request might have been split, leaving some queued).
            staying = _raw_post(port, "/rerank", {"query": QUERY, "documents": DOCS[:1]})
            assert gated.entered.wait(30)
            leaving = _raw_post(port, "/rerank", {"query": QUERY, "documents": DOCS[1:]})
            _wait_until(lambda: engine.queued_pairs == 3, "the second request is queued")
            leaving.close()
            _wait_until(lambda: engine.queued_pairs == 0, "the queued pairs are dropped")
            _wait_until(lambda: _errors(app, "client_disconnected") == 1, "it is counted")
        finally:
            gated.gate.set()
        assert _read_status(staying) == 200
        assert http.get("/health").status_code == 200
    passes = Exposition.of(app.state.metrics.registry).histogram("reranker_batch_size")
    assert passes.sum == 1  # the leaver's pairs never reached the model


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
    assert _errors(app, "oom") == 1


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
