"""The benchmark's service contender measures computing: a real service process, its score cache
off, its passes read from its own /metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.paths import ROOT
from tests.support.script_modules import load_bench_module

pytestmark = pytest.mark.slow  # starts a real server process

QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital of France.", "Berlin is in Germany.", "a third, longer one"]


async def test_the_service_contender_computes_every_request_and_counts_its_passes(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same request twice is computed twice (a score cache would answer the second without
    a pass, and the bench replays its requests), and the passes come from the service's
    device-labelled pass histograms."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    contenders = load_bench_module("contenders")
    workloads = load_bench_module("workloads")
    service = contenders.ServiceOverHttp(str(checkpoint), "cpu", "float32", 512)
    await service.start()
    try:
        await service.snapshot()
        request = workloads.Request(QUERY, DOCUMENTS)
        for _ in range(2):
            assert await service.rerank(request) > 0
        passes = await service.passes()
    finally:
        await service.stop()
    assert passes.pairs == 2 * len(DOCUMENTS)
    assert passes.count >= 2
    assert 0 < passes.real_tokens <= passes.padded_tokens
