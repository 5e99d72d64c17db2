"""SIGTERM to a real process under load: it stops taking work at once, finishes what it
accepted, and exits 0."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.support.service_process import start_service

pytestmark = pytest.mark.slow  # starts real server processes

CLIENTS = 12
ACCEPTED_BEFORE_SIGNAL = 8
DOCUMENTS = [f"document {n}: " + "several words of text " * 40 for n in range(60)]


def _post(base_url: str, request_id: str) -> httpx.Response:
    with httpx.Client(base_url=base_url, timeout=120) as http:
        return http.post(
            "/rerank",
            json={"query": "which document", "documents": DOCUMENTS},
            headers={"X-Request-ID": request_id},
        )


def test_sigterm_under_load_drains_then_exits_zero(checkpoint: Path) -> None:
    service = start_service(checkpoint, "--shutdown-grace-seconds", "120")
    try:
        # uvicorn says it is running once the lifespan has started: the model is loaded and
        # the service ready.
        base_url = service.base_url()
        with (
            httpx.Client(base_url=base_url, timeout=30) as http,
            ThreadPoolExecutor(CLIENTS) as pool,
        ):
            assert http.get("/ready").status_code == 200
            loads = [pool.submit(_post, base_url, f"load-{n}") for n in range(CLIENTS)]
            # Signal once most of the load is inside the service, as its log says.
            for _ in range(ACCEPTED_BEFORE_SIGNAL):
                service.wait_for("rerank_started")
            service.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            # The service has taken the signal: Python runs its handler between two steps of
            # the event loop, which may first serve a request sent after the signal.
            service.wait_for("draining")
            ready = http.get("/ready")
            refused = http.post("/rerank", json={"query": "q", "documents": ["late"]})
            answered = [load.result() for load in loads]
        exit_code = service.proc.wait(timeout=120)
        exited_after = time.monotonic() - signalled
        records = service.finish()
    finally:
        service.stop()

    assert (ready.status_code, ready.json()) == (503, {"status": "draining"})
    assert refused.status_code == 503
    assert refused.json()["error"]["type"] == "draining"
    # Every request accepted before the signal was answered in full; one that arrived after it
    # was refused as draining, or (admitted in the same instant) answered in full. stdout is
    # one ordered stream, so the log says which came before the signal.
    drained_at = next(i for i, r in enumerate(records) if r["event"] == "draining")
    accepted = {r["request_id"] for r in records[:drained_at] if r["event"] == "rerank_started"}
    assert len(accepted) >= ACCEPTED_BEFORE_SIGNAL
    for n, response in enumerate(answered):
        if response.status_code == 503 and f"load-{n}" not in accepted:
            assert response.json()["error"]["type"] == "draining"
            continue
        assert response.status_code == 200, f"load-{n}"
        assert len(response.json()["results"]) == len(DOCUMENTS)
    assert exit_code == 0
    assert exited_after < 120
    draining = next(r for r in records if r["event"] == "draining")
    assert draining["signal"] == "SIGTERM"
    assert draining["in_flight"] >= 1
    completed = {r["request_id"] for r in records if r["event"] == "request_completed"}
    assert accepted <= completed
    assert any(r["event"] == "shutdown" for r in records)
