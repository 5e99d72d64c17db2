"""/metrics: the SPEC's catalog from the first scrape, exact under concurrency, lint-clean."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from reranker_service.engine.runner.protocol import (
    ServedModel,
)
from reranker_service.engine.scoring import probability
from tests.support.exposition import scrape
from tests.support.fake_nvml import FakeGpu, FakeNvml
from tests.support.serving import AppFactory, GatedModel, asgi_client

KEY = "metrics-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROUTES = ("/rerank", "/v1/rerank", "/v2/rerank")

SPEC_FAMILIES = {
    "reranker_requests": "counter",
    "reranker_request_errors": "counter",
    "reranker_request_latency_seconds": "histogram",
    "reranker_request_documents": "histogram",
    "reranker_request_tokens": "histogram",
    "reranker_queue_wait_seconds": "histogram",
    "reranker_inference_seconds": "histogram",
    "reranker_batch_size": "histogram",
    "reranker_batch_tokens": "histogram",
    "reranker_prefix_tokens_reused": "counter",
    "reranker_queue_depth": "gauge",
    "reranker_inflight_requests": "gauge",
    "reranker_top1_score": "histogram",
    "reranker_score_stddev": "histogram",
    "reranker_gpu_memory_used_bytes": "gauge",
    "reranker_gpu_memory_total_bytes": "gauge",
    "reranker_gpu_utilization_ratio": "gauge",
    "reranker_nvml_up": "gauge",
    "reranker_model_info": "gauge",
}
SPEC_ERROR_TYPES = {
    "validation",
    "payload_too_large",
    "unauthorized",
    "overloaded",
    "timeout",
    "oom",
    "internal",
    "client_disconnected",
}


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    """Wait for a condition on another thread's work, with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_every_family_exists_before_the_first_request(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    async with asgi_client(app_factory()) as http:
        exposition = await scrape(http)
    families = exposition.families
    for name, kind in SPEC_FAMILIES.items():
        assert families[name].type == kind, name
    assert exposition.value("reranker_requests_total", status="success") == 0
    assert exposition.value("reranker_requests_total", status="fail") == 0
    error_types = {s.labels["type"] for s in exposition.samples("reranker_request_errors")}
    assert error_types >= SPEC_ERROR_TYPES
    assert all(s.value == 0 for s in exposition.samples("reranker_request_errors"))
    described = scoring_model.description
    [info] = exposition.samples("reranker_model_info")
    assert info.value == 1
    # One model served alone is named by its checkpoint.
    assert info.labels == {
        "model": described.model,
        "revision": described.revision,
        "device": "cpu",
        "dtype": "float32",
        "checkpoint": described.model,
        "kind": described.kind,
    }
    latency_bounds = set(exposition.histogram("reranker_request_latency_seconds").buckets)
    assert {0.005, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf")} <= latency_bounds
    assert min(latency_bounds) == 0.005
    assert max(latency_bounds - {float("inf")}) == 10.0
    assert "process_resident_memory_bytes" in families


async def test_counts_equal_what_was_sent(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    gated = GatedModel(scoring_model)
    app = app_factory(
        model=gated, api_key=KEY, max_documents=8, max_queued_pairs=8, max_request_bytes=1024
    )
    sent: list[tuple[list[str], httpx.Response]] = []

    async def post(route: str, documents: list[str], **extra: Any) -> None:
        headers = extra.pop("headers", AUTH)
        if "content" in extra:
            headers = {**headers, "content-type": "application/json"}
            response = await http.post(route, content=extra["content"], headers=headers)
        else:
            body = {"query": "which one?", "documents": documents, **extra}
            response = await http.post(route, json=body, headers=headers)
        sent.append((documents, response))

    async with asgi_client(app) as http:
        # Phase 1, all at once: successes of 0-4 documents on every route, and every kind of
        # client error.
        await asyncio.gather(
            *(
                post(ROUTES[i % 3], [f"doc {i}-{j} " * (j + 1) for j in range(i % 5)])
                for i in range(30)
            ),
            *(post("/rerank", ["d"], top_n=0) for _ in range(4)),
            *(post("/v1/rerank", [], content=b'{"query": ') for _ in range(3)),
            *(
                post("/v2/rerank", ["d"], headers={"Authorization": "Bearer nope"})
                for _ in range(3)
            ),
            *(post("/rerank", ["d"] * 9) for _ in range(2)),
            *(post("/v2/rerank", ["x" * 2000]) for _ in range(2)),
        )
        # Phase 2: overload. One request holds the worker, one fills the queue, three bounce.
        gated.gate.clear()
        gated.entered.clear()
        held = asyncio.create_task(post("/rerank", ["held"] * 8))
        assert await asyncio.to_thread(gated.entered.wait, 30)
        queued = asyncio.create_task(post("/rerank", ["queued"] * 8))

        async def queue_is_full() -> bool:
            return (await scrape(http)).value("reranker_queue_depth") == 8

        await _eventually(queue_is_full)
        during = await scrape(http)
        await asyncio.gather(*(post("/v2/rerank", ["bounced"] * 8) for _ in range(3)))
        gated.gate.set()
        await asyncio.gather(held, queued)
        after = await scrape(http)

    assert during.value("reranker_inflight_requests") == 2
    codes = Counter(response.status_code for _, response in sent)
    assert (codes[422], codes[400], codes[401], codes[413]) == (4, 3, 3, 4)
    assert codes[429] >= 3
    assert codes[200] + codes[429] == 30 + 5
    successes = [(docs, r.json()) for docs, r in sent if r.status_code == 200]
    scores = [[result["relevance_score"] for result in body["results"]] for _, body in successes]

    assert after.value("reranker_requests_total", status="success") == codes[200]
    assert after.value("reranker_requests_total", status="fail") == codes[429]
    expected_errors = {
        "validation": codes[422] + codes[400],
        "unauthorized": codes[401],
        "payload_too_large": codes[413],
        "overloaded": codes[429],
    }
    for error_type in SPEC_ERROR_TYPES:
        value = after.value("reranker_request_errors_total", type=error_type)
        assert value == expected_errors.get(error_type, 0), error_type

    pairs = sum(len(docs) for docs, _ in successes)
    latency = after.histogram("reranker_request_latency_seconds")
    assert latency.count == codes[200]
    assert latency.sum > 0
    documents = after.histogram("reranker_request_documents")
    assert (documents.count, documents.sum) == (codes[200], pairs)
    tokens = after.histogram("reranker_request_tokens")
    assert tokens.count == codes[200]
    assert tokens.sum == sum(body["usage"]["total_tokens"] for _, body in successes)
    top1 = after.histogram("reranker_top1_score")
    assert top1.count == sum(1 for s in scores if s)
    assert top1.sum == pytest.approx(sum(max(s) for s in scores if s))
    spread = after.histogram("reranker_score_stddev")
    assert spread.count == sum(1 for s in scores if len(s) >= 2)
    assert spread.sum == pytest.approx(sum(statistics.pstdev(s) for s in scores if len(s) >= 2))

    batch_size = after.histogram("reranker_batch_size")
    assert batch_size.sum == pairs
    assert after.histogram("reranker_queue_wait_seconds").count == pairs
    assert after.histogram("reranker_inference_seconds").count == batch_size.count
    # Every token a request was billed for was either computed (padding aside) or read from
    # its shared-prefix cache.
    reused = after.value("reranker_prefix_tokens_reused_total")
    assert reused > 0
    assert after.histogram("reranker_batch_tokens").sum + reused >= tokens.sum
    assert after.value("reranker_queue_depth") == 0
    assert after.value("reranker_inflight_requests") == 0

    http_counts = Counter[str]()
    for sample in after.samples("http_requests"):
        if sample.name == "http_requests_total":
            assert sample.labels["handler"] in ROUTES
            http_counts[sample.labels["status"]] += int(sample.value)
    assert http_counts["2xx"] == codes[200]
    assert http_counts["4xx"] == sum(n for code, n in codes.items() if 400 <= code < 500)


async def test_probes_scrapes_and_unknown_paths_stay_out_of_http_metrics(
    app_factory: AppFactory,
) -> None:
    async with asgi_client(app_factory()) as http:
        for path in ("/health", "/ready", "/metrics", "/no/such/path/123", "/info"):
            await http.get(path)
        exposition = await scrape(http)
    handlers = {
        sample.labels["handler"]
        for family in ("http_requests", "http_request_duration_seconds")
        for sample in exposition.samples(family)
        if "handler" in sample.labels
    }
    assert handlers == {"/info"}


async def test_timing_headers_account_for_the_request(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v2/rerank", json={"query": "q", "documents": ["one", "two words", "three short words"]}
    )
    headers = response.headers
    phases = [
        float(headers[name]) for name in ("x-tokenization-time", "x-queue-time", "x-inference-time")
    ]
    total = float(headers["x-total-time"])
    assert all(value >= 0 for value in phases)
    assert sum(phases) <= total
    # The tokens computed: the pairs' tokens, less the shared prompt prefix the later pairs
    # of the pass read instead of computing it again.
    assert 0 < int(headers["x-compute-tokens"]) < response.json()["usage"]["total_tokens"]
    timing = dict(part.strip().split(";dur=") for part in headers["server-timing"].split(","))
    assert float(timing["total"]) == total
    # The engine's wall time holds the three phases and the hand-offs between them.
    assert sum(phases) - 0.01 <= float(timing["engine"]) <= total

    refused = await client.post("/v2/rerank", json={"query": "q", "documents": "not a list"})
    assert refused.status_code == 422
    assert float(refused.headers["x-total-time"]) > 0
    assert "x-inference-time" not in refused.headers


def _lint(promtool: str, exposition: str) -> str:
    """promtool's complaints; empty when it has none."""
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
    )
    complaints = (result.stdout + result.stderr).strip()
    assert (result.returncode == 0) == (complaints == ""), complaints
    return complaints


def test_promtool_flags_a_bad_exposition(promtool: str) -> None:
    """The lint below is only worth something if promtool does complain about bad names."""
    name = "job_latency_milliseconds"
    bad = f"# HELP {name} x\n# TYPE {name} gauge\n{name} 1\n"
    assert "milliseconds" in _lint(promtool, bad)


async def test_promtool_finds_nothing_in_the_exposition(
    app_factory: AppFactory, promtool: str
) -> None:
    nvml = FakeNvml([FakeGpu(80 * 1024**3, 10 * 1024**3, 40)])
    async with asgi_client(app_factory(nvml=nvml)) as http:
        await http.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
        await http.post("/rerank", content=b"{", headers={"content-type": "application/json"})

        async def gpus_polled() -> bool:
            return (await scrape(http)).value("reranker_nvml_up") == 1

        await _eventually(gpus_polled)
        exposition = await scrape(http)
    assert exposition.samples("reranker_gpu_memory_used_bytes"), "GPU gauges should be filled"
    assert _lint(promtool, exposition.text) == ""


@pytest.mark.parametrize("path", ["/v2/rerank", "/rerank", "/score"])
async def test_quality_signals_are_probabilities_whatever_the_response_carries(
    app_factory: AppFactory, path: str
) -> None:
    """A raw-score request answers logits; the drift histograms still get P(yes), so that
    RerankerScoreDrift compares like with like."""
    documents = ["Paris is the capital of France.", "Berlin is in Germany.", "Cheese."]
    bodies = {
        "/v2/rerank": {"query": "capital?", "documents": documents, "raw_scores": True},
        "/rerank": {"query": "capital?", "texts": documents, "raw_scores": True},
        "/score": {"text_1": "capital?", "text_2": documents, "raw_scores": True},
    }
    async with asgi_client(app_factory()) as http:
        answer = await http.post(path, json=bodies[path])
        after = await scrape(http)
    assert answer.status_code == 200
    body = answer.json()
    logits = {
        "/v2/rerank": lambda: [result["relevance_score"] for result in body["results"]],
        "/rerank": lambda: [rank["score"] for rank in body],
        "/score": lambda: [item["score"] for item in body["data"]],
    }[path]()
    probabilities = [probability(logit) for logit in logits]
    top1 = after.histogram("reranker_top1_score")
    assert top1.count == 1
    assert top1.sum == pytest.approx(max(probabilities))
    spread = after.histogram("reranker_score_stddev")
    assert spread.sum == pytest.approx(statistics.pstdev(probabilities))


async def test_compute_tokens_counts_what_the_model_computed(app_factory: AppFactory) -> None:
    """A full cache hit computed nothing: ``X-Compute-Tokens: 0``, whatever its usage bills."""
    payload = {"query": "capital?", "documents": ["Paris is the capital of France.", "Cheese."]}
    async with asgi_client(app_factory(cache_size=100)) as http:
        computed = await http.post("/v2/rerank", json=payload)
        cached = await http.post("/v2/rerank", json=payload)
    assert computed.headers["x-reranker-cache"] == "miss"
    assert int(computed.headers["x-compute-tokens"]) > 0
    assert cached.headers["x-reranker-cache"] == "hit"
    assert cached.headers["x-compute-tokens"] == "0"
    assert cached.json()["usage"]["total_tokens"] == computed.json()["usage"]["total_tokens"]
