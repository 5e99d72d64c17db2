"""The service as users run it: a real process, real signals, stdout read line by line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import httpx
import pytest

LINE_TIMEOUT_S = 60


class ServiceProcess:
    """``python -m reranker_service`` with stdout parsed as JSON lines on a reader thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.lines: Queue[dict[str, Any]] = Queue()
        self.raw_lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "reranker_service", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw_lines.append(line)
            self.lines.put(json.loads(line))

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        while True:
            try:
                record = self.lines.get(timeout=LINE_TIMEOUT_S)
            except Empty:
                raise AssertionError(f"no {event!r} log line within {LINE_TIMEOUT_S}s") from None
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)


@pytest.fixture
def service(checkpoint: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(
        "--model",
        str(checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--log-level",
        "debug",
        "--device",
        "cpu",
    )
    yield process
    process.stop()


def _base_url(process: ServiceProcess) -> str:
    while True:
        record = process.lines.get(timeout=LINE_TIMEOUT_S)
        match = re.search(r"running on (http://127\.0\.0\.1:\d+)", record.get("event", ""))
        if match:
            return match.group(1)


def test_sigterm_drains_in_flight_requests_and_exits_zero(service: ServiceProcess) -> None:
    base_url = _base_url(service)
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


def test_stdout_is_json_lines_with_the_contract_keys(service: ServiceProcess) -> None:
    base_url = _base_url(service)
    response = httpx.post(
        f"{base_url}/v2/rerank",
        json={"query": "secret query text", "documents": ["a", "b"]},
        headers={"X-Request-ID": "req-77"},
        timeout=30,
    )
    assert response.status_code == 200
    completed = service.wait_for("request_completed", request_id="req-77")
    assert completed["doc_count"] == 2
    assert {"tokens", "latency_ms", "top1_score", "score_std", "top_n"} <= set(completed)
    service.proc.send_signal(signal.SIGTERM)
    assert service.proc.wait(timeout=60) == 0
    service._reader.join(timeout=30)
    for line in service.raw_lines:
        record = json.loads(line)
        assert {"timestamp", "level", "event", "logger"} <= set(record)
        assert record["timestamp"].endswith("Z")
    assert not any("secret query text" in line for line in service.raw_lines)


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
