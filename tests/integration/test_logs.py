"""stdout of a running service: JSON lines only, with the SPEC's keys and events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.service_process import start_service

pytestmark = pytest.mark.slow  # starts real server processes

SECRET_QUERY = "secret query text"


def _by_request(records: list[dict[str, Any]], request_id: str) -> dict[str, dict[str, Any]]:
    return {r["event"]: r for r in records if r.get("request_id") == request_id}


def test_every_line_is_json_and_request_lines_carry_their_id(checkpoint: Path) -> None:
    service = start_service(checkpoint)
    try:
        base_url = service.base_url()
        with httpx.Client(base_url=base_url, timeout=30) as http:
            ok = http.post(
                "/v2/rerank",
                json={"query": SECRET_QUERY, "documents": ["a", "b"], "top_n": 1},
                headers={"X-Request-ID": "req-ok"},
            )
            bad = http.post(
                "/rerank",
                json={"query": SECRET_QUERY, "documents": ["a"], "top_n": 0},
                headers={"X-Request-ID": "req-bad"},
            )
            http.get("/health", headers={"X-Request-ID": "req-probe"})
            http.get("/info", headers={"X-Request-ID": "req-info"})
        assert (ok.status_code, bad.status_code) == (200, 422)
        service.wait_for("request_failed", request_id="req-bad")
        service.proc.send_signal(signal.SIGTERM)
        records = service.finish()
    finally:
        service.stop()

    assert service.proc.returncode == 0
    for record in records:
        assert {"timestamp", "level", "event", "logger"} <= set(record), record
        assert datetime.fromisoformat(record["timestamp"]).utcoffset() == timedelta(0)
    assert not any(SECRET_QUERY in line for line in service.raw_lines)

    events = {record["event"] for record in records}
    assert {"model_loaded", "nvml_unavailable", "service_ready", "draining", "shutdown"} <= events
    loaded = next(r for r in records if r["event"] == "model_loaded")
    assert {"model", "device", "dtype", "load_seconds"} <= set(loaded)

    completed = _by_request(records, "req-ok")["request_completed"]
    assert completed["doc_count"] == 2
    assert completed["top_n"] == 1
    assert completed["tokens"] == ok.json()["usage"]["total_tokens"]
    assert completed["top1_score"] == ok.json()["results"][0]["relevance_score"]
    assert {"latency_ms", "score_std", "queue_ms", "inference_ms"} <= set(completed)
    failed = _by_request(records, "req-bad")["request_failed"]
    assert (failed["error_type"], failed["status"]) == ("validation", 422)
    assert {"doc_count", "query_chars"} <= set(failed)

    # uvicorn's access lines are structured and carry the request id. Probes, and successful
    # reranks (which have their request_completed line), drop to debug.
    access = _by_request(records, "req-ok")["http_request"]
    assert (access["method"], access["path"], access["status"]) == ("POST", "/v2/rerank", 200)
    assert access["logger"] == "uvicorn.access"
    levels = {
        request_id: _by_request(records, request_id)["http_request"]["level"]
        for request_id in ("req-ok", "req-bad", "req-probe", "req-info")
    }
    assert levels == {
        "req-ok": "debug", "req-bad": "info", "req-probe": "debug", "req-info": "info"
    }  # fmt: skip


def test_query_text_and_sampling_follow_the_settings(checkpoint: Path) -> None:
    service = start_service(
        checkpoint,
        "--max-documents",
        "2",
        env={"RERANKER_LOG_QUERY_CHARS": "6", "RERANKER_LOG_SAMPLE_RATE": "0"},
    )
    try:
        with httpx.Client(base_url=service.base_url(), timeout=30) as http:
            for index in range(5):
                http.post(
                    "/rerank",
                    json={"query": SECRET_QUERY, "documents": ["a"]},
                    headers={"X-Request-ID": f"sampled-out-{index}"},
                )
            too_many = http.post(
                "/rerank",
                json={"query": SECRET_QUERY, "documents": ["a", "b", "c"]},
                headers={"X-Request-ID": "too-many"},
            )
        assert too_many.status_code == 413
        service.wait_for("request_failed", request_id="too-many")
        service.proc.send_signal(signal.SIGTERM)
        records = service.finish()
    finally:
        service.stop()

    # Sample rate 0: no completion lines, but failures are always logged.
    assert not any(r["event"] == "request_completed" for r in records)
    failed = _by_request(records, "too-many")["request_failed"]
    assert failed["query"] == SECRET_QUERY[:6]
    assert failed["query_chars"] == len(SECRET_QUERY)
    assert (failed["error_type"], failed["doc_count"]) == ("payload_too_large", 3)
    assert not any(SECRET_QUERY in line for line in service.raw_lines)


LIBRARY_LOGS = textwrap.dedent(
    """
    import logging, sys, warnings
    from reranker_service.app import load_options
    from reranker_service.cli import load_settings
    from reranker_service.engine.loading import load_single_device_model
    from reranker_service.observability.logging import configure_logging

    settings = load_settings(["--model", sys.argv[1], "--device", "cpu"])
    configure_logging(settings.log_level, settings.log_format)
    load_single_device_model(load_options(settings))
    from transformers.utils import logging as transformers_logging
    transformers_logging.get_logger("transformers.modeling_utils").warning("from transformers")
    logging.getLogger("huggingface_hub.file_download").warning("from huggingface_hub")
    logging.getLogger("torch.distributed").warning("from torch")
    warnings.warn("from warnings", UserWarning, stacklevel=1)
    torchao = logging.getLogger("torchao")
    torchao.warning("Failed to load /venv/torchao/_C_cutlass_90a.abi3.so: Could not load this")
    torchao.warning("from torchao")
    """
)


def test_library_logs_go_through_the_same_renderer(checkpoint: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-c", LIBRARY_LOGS, str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert completed.returncode == 0, completed.stderr
    records = [json.loads(line) for line in completed.stdout.splitlines()]
    by_event = {record["event"].strip(): record for record in records}
    for library in ("transformers", "huggingface_hub", "torch"):
        assert by_event[f"from {library}"]["logger"].startswith(library)
        assert by_event[f"from {library}"]["level"] == "warning"
    assert any("from warnings" in record["event"] for record in records)
    assert "from " not in completed.stderr
    # torchao's import-time note about CUDA kernels a CPU torch cannot load is dropped; its
    # other lines are not.
    assert by_event["from torchao"]["level"] == "warning"
    assert "Failed to load" not in completed.stdout + completed.stderr


_CONSOLE_LINE = textwrap.dedent(
    """
    import os, sys, structlog
    from reranker_service.observability.logging import configure_logging
    if sys.argv[1] == "terminal":
        screen, terminal = os.openpty()
        stream = os.fdopen(terminal, "w")
    else:
        stream = open(sys.argv[2], "w")
    configure_logging("info", "console", stream)
    structlog.get_logger("demo").info("hello", pairs=3)
    stream.flush()
    if sys.argv[1] == "terminal":
        written = os.read(screen, 65536).decode()
    else:
        written = open(sys.argv[2]).read()
    print("hello" in written, "\x1b[" in written)
    """
)


@pytest.mark.parametrize("where", ["file", "terminal"])
def test_console_logs_are_coloured_only_on_a_terminal(where: str, tmp_path: Path) -> None:
    """``RERANKER_LOG_FORMAT=console`` redirected to a file must not write ANSI escapes into
    it; at a terminal the colours stay."""
    completed = subprocess.run(
        [sys.executable, "-c", _CONSOLE_LINE, where, str(tmp_path / "service.log")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    written, coloured = completed.stdout.split()
    assert written == "True"
    assert coloured == str(where == "terminal")


def test_making_a_test_model_prints_no_library_warnings(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "reranker_service.tiny_checkpoint", str(tmp_path / "model")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert completed.stdout.strip() == f"wrote test checkpoint to {tmp_path / 'model'}"
    assert "register_constant" not in completed.stderr
    assert "Warning" not in completed.stderr
