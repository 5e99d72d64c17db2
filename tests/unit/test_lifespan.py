"""The lifespan stops everything it started, whatever fails after it."""

from __future__ import annotations

import asyncio
import re
import socket
import threading

import pytest
from asgi_lifespan import LifespanManager

from reranker_service.app import StartupError
from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.runner.protocol import PassBatch, PendingScores, ServedModel
from tests.support.prometheus_server import free_port, taken_port
from tests.support.serving import AppFactory, RunnerWrapper, sequences_of


class FailsOnRealPairs(RunnerWrapper):
    """Passes calibration (made of prompt-prefix tokens only), then fails the warm-up request's
    forward pass: after the metrics server, the NVML poller, the batcher's worker thread and the
    tokenizer threads have all started."""

    def launch(self, batch: PassBatch) -> PendingScores:
        assert isinstance(self.encoder, PromptEncoder)
        suffix = self.encoder.suffix_ids
        if any(tuple(seq[-len(suffix) :]) == suffix for seq in sequences_of(batch)):
            raise RuntimeError("injected warm-up failure")
        return super().launch(batch)


def _our_threads() -> set[threading.Thread]:
    """Live threads, less the event loop's default executor (``asyncio.to_thread``), which
    belongs to the loop rather than to the app."""
    return {thread for thread in threading.enumerate() if not thread.name.startswith("asyncio_")}


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def _start_expecting_failure(app_factory: AppFactory, **overrides: object) -> BaseException:
    threads_before = _our_threads()
    tasks_before = asyncio.all_tasks()
    app = app_factory(**overrides)
    with pytest.raises(Exception) as failure:  # noqa: PT011 - each test checks which
        async with LifespanManager(app):
            pytest.fail("start-up should have failed")
    assert _our_threads() - threads_before == set()
    assert asyncio.all_tasks() - tasks_before == set()
    assert app.state.lifecycle.phase != "ready"
    return failure.value


async def test_a_taken_metrics_port_fails_start_up_naming_it(app_factory: AppFactory) -> None:
    with taken_port() as port:
        error = await _start_expecting_failure(app_factory, metrics_port=port)
    assert isinstance(error, StartupError)
    assert re.search(rf"127\.0\.0\.1:{port} \(RERANKER_METRICS_PORT\): .*in use", str(error))


async def test_a_failure_after_every_resource_started_stops_them_all(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    metrics_port = free_port()
    error = await _start_expecting_failure(
        app_factory, model=FailsOnRealPairs(scoring_model), metrics_port=metrics_port
    )
    assert "injected warm-up failure" in str(error)
    assert _port_is_free(metrics_port), "the metrics server still holds its port"
