"""The compiled runner in a real service process, as an operator starts it: a compiler that fails
leaves a background replica serving exact scores on the padded runner, and says so. (That a
restart reads what the first start compiled is checked on the image, ``tests/ops/test_image.py``,
and by ``bench/gpu_check.py``'s warm start, ``tests/integration/test_gpu_check.py``.)"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.support.exposition import Exposition
from tests.support.model_card import ModelCardReranker
from tests.support.service_process import ServiceProcess, start_service

pytestmark = pytest.mark.slow

ONE_BUCKET = ("--max-length", "128", "--max-batch-tokens", "128")
"""One 128-token bucket: the least there is to compile."""
QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", "yes"]


def _failing_compiler(folder: Path) -> Path:
    """A C++ compiler that runs and fails, as a broken toolchain does."""
    compiler = folder / "broken-c++"
    compiler.write_text('#!/bin/sh\necho "broken-c++: fatal error: no input files" >&2\nexit 1\n')
    compiler.chmod(compiler.stat().st_mode | stat.S_IXUSR)
    return compiler


def test_a_compiler_that_fails_leaves_a_background_replica_exact_on_the_padded_runner(
    checkpoint: Path, tmp_path: Path
) -> None:
    env = {"CXX": str(_failing_compiler(tmp_path))}
    args = ("--compile", "background", "--compile-cache", str(tmp_path / "cache"))
    service: ServiceProcess = start_service(checkpoint, *ONE_BUCKET, *args, env=env)
    try:
        with httpx.Client(base_url=service.base_url(), timeout=60) as http:
            assert http.get("/ready").status_code == 200
            fallback = service.wait_for("runner_fallback")
            (device,) = http.get("/info").json()["devices"]
            answer = http.post(
                "/rerank", json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
            )
            metrics = Exposition(http.get("/metrics").text)
    finally:
        service.stop()
    assert fallback["stage"] == "compile"
    assert fallback["level"] == "warning"
    assert "compiler" in fallback["error"].lower()
    assert device["runner"]["name"] == "padded"
    assert device["runner"]["compile_state"] == "fallback"
    assert device["runner"]["compile_stage"] == "compile"
    assert device["runner"]["compile_error"] == fallback["error"]
    assert metrics.value(
        "reranker_runner_compile_state", device="cpu", reranker_runner_compile_state="fallback"
    )
    assert metrics.value(
        "reranker_runner_info", device="cpu", runner="padded", compiled="false", cuda_graphs="false"
    )
    assert answer.status_code == 200
    scores = sorted(answer.json()["results"], key=lambda result: result["index"])
    expected = ModelCardReranker(checkpoint, max_length=128).raw_alone(None, QUERY, DOCUMENTS)
    for result, reference in zip(scores, expected, strict=True):
        assert abs(result["relevance_score"] - reference) <= 1e-5
    assert os.environ.get("CXX") != env["CXX"]  # the failing compiler stayed in the child
