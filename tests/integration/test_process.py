"""The service as users run it: a real process, real signals, stdout read line by line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.prometheus_server import taken_port
from tests.support.service_process import ServiceProcess, start_service

pytestmark = pytest.mark.slow  # starts real server processes


@pytest.fixture
def service(checkpoint: Path) -> Iterator[ServiceProcess]:
    process = start_service(checkpoint)
    yield process
    process.stop()


def test_sigterm_drains_in_flight_requests_and_exits_zero(service: ServiceProcess) -> None:
    base_url = service.base_url()
    docs = [f"document {i} " + "padding words " * (i % 100) for i in range(400)]
    results: dict[str, httpx.Response] = {}

    def send() -> None:
        results["in_flight"] = httpx.post(
            f"{base_url}/rerank",
            json={"query": "q", "documents": docs},
            headers={"X-Request-ID": "in-flight-1"},
            timeout=120,
        )

    sender = threading.Thread(target=send)
    sender.start()
    service.wait_for("rerank_started", request_id="in-flight-1")
    service.proc.send_signal(signal.SIGTERM)
    service.wait_for("draining", signal="SIGTERM")
    sender.join(timeout=120)

    assert service.proc.wait(timeout=60) == 0
    response = results["in_flight"]
    assert response.status_code == 200
    assert len(response.json()["results"]) == len(docs)
    events = [json.loads(line)["event"] for line in service.raw_lines]
    assert events.index("request_completed") < events.index("shutdown")


def test_unloadable_model_exits_nonzero_with_one_error_line(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "reranker_service", "--model", str(tmp_path / "nothing-here")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 1
    lines = completed.stdout.splitlines()
    errors = [json.loads(line) for line in lines if json.loads(line)["level"] == "error"]
    assert len(errors) == 1
    assert errors[0]["event"] == "model_load_failed"
    assert "nothing-here" in errors[0]["error"]
    assert "Traceback" not in completed.stdout + completed.stderr


def test_hub_model_offline_exits_nonzero_naming_it(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "reranker_service"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)},
    )
    assert completed.returncode == 1
    (line,) = completed.stdout.splitlines()
    record = json.loads(line)
    assert (record["event"], record["level"]) == ("model_load_failed", "error")
    assert "Qwen/Qwen3-Reranker-0.6B" in record["error"]
    # Already offline: not told to set what is set.
    assert "HF_HUB_OFFLINE is set" in record["error"]
    assert "set HF_HUB_OFFLINE=1" not in record["error"]


def test_bad_setting_exits_2_naming_it() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "reranker_service", "--device", "tpu"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "device" in completed.stderr
    assert completed.stdout == ""


def test_taken_metrics_port_exits_nonzero_naming_it(checkpoint: Path) -> None:
    with taken_port() as port:
        completed = subprocess.run(
            [
                *(sys.executable, "-m", "reranker_service", "--model", str(checkpoint)),
                *("--device", "cpu", "--host", "127.0.0.1", "--port", "0"),
                *("--metrics-port", str(port)),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    assert completed.returncode == 3  # uvicorn's exit status for a failed start-up
    records = [json.loads(line) for line in completed.stdout.splitlines()]
    (failed,) = [record for record in records if record["event"] == "startup_failed"]
    assert f"127.0.0.1:{port} (RERANKER_METRICS_PORT)" in failed["error"]
    assert not any(record["event"] == "service_ready" for record in records)
