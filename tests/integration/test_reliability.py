"""Faults: requests that time out, clients that leave, and a device that runs out of memory.
Nothing accepted is lost, nothing abandoned keeps its place in the queue, the server stays up."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from reranker_service.engine.runner.protocol import (
    ServedModel,
)
from tests.support.exposition import Exposition
from tests.support.local_server import serve_in_thread
from tests.support.serving import AppFactory, GatedModel, asgi_client

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
