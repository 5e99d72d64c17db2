"""Tracing: a rerank request's spans join the caller's trace over OTLP, its log lines and its
latency exemplar carry the trace id; with tracing off nothing of it runs."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from reranker_service import __version__
from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.observability.metrics import EXEMPLAR_TRACE_LABEL
from reranker_service.observability.tracing import (
    Tracing,
    TracingConfig,
    TracingConfigError,
    add_trace_ids,
    start_tracing,
)
from tests.support.local_server import serve_in_thread
from tests.support.otlp_receiver import (
    ReceivedSpan,
    SpanStore,
    otlp_grpc_receiver,
    otlp_http_receiver,
)
from tests.support.prometheus_server import run_prometheus
from tests.support.service_process import start_service
from tests.support.serving import asgi_client, make_settings

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
BODY = {
    "query": "what is the capital of france",
    "documents": [
        "paris is the capital of france",
        "berlin is the capital of germany",
        "the capital of france is a city on the seine",
    ],
    "top_n": 2,
}
# The timing headers are rounded to the microsecond; spans are stamped in nanoseconds.
HEADER_ROUNDING_MS = 0.0011


def _tracing_from_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Tracing:
    """Tracing as ``python -m reranker_service`` starts it, with only the endpoint set."""
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    config = TracingConfig.from_environ(os.environ)
    assert config is not None
    return start_tracing(config, service_version=__version__)


@contextlib.asynccontextmanager
async def traced_client(
    checkpoint: Path,
    model: ServedModel,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: str,
    **overrides: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """An app with tracing set up as the service sets it up from its environment, exporting to
    ``endpoint`` over OTLP/HTTP; its spans are flushed when the block ends."""
    tracing = _tracing_from_environment(monkeypatch, endpoint)
    app = create_app(make_settings(checkpoint, **overrides), model=model, tracing=tracing)
    async with asgi_client(app) as http:
        yield http


def _by_name(spans: list[ReceivedSpan], trace_id: str) -> dict[str, ReceivedSpan]:
    found = [span for span in spans if span.trace_id == trace_id]
    by_name = {span.name: span for span in found}
    assert len(by_name) == len(found), [span.name for span in found]
    return by_name


def _milliseconds(span: ReceivedSpan) -> float:
    return (span.end_ns - span.start_ns) / 1e6


def _openmetrics_exemplars(text: str, family: str) -> list[str]:
    """The trace ids of ``family``'s bucket exemplars."""
    pattern = re.compile(rf'^{family}_bucket\{{[^}}]*\}} \S+ # \{{trace_id="([0-9a-f]+)"\}}', re.M)
    return pattern.findall(text)


async def test_a_request_is_traced_from_the_callers_span_to_the_forward_pass(
    checkpoint: Path, scoring_model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_http_receiver() as (endpoint, store):
        async with traced_client(checkpoint, scoring_model, monkeypatch, endpoint) as http:
            with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
                response = await http.post(
                    "/v1/rerank", json=BODY, headers={"traceparent": SAMPLED}
                )
            assert response.status_code == 200, response.text
            openmetrics = await http.get("/metrics", headers={"Accept": OPENMETRICS})
            classic = await http.get("/metrics")

    spans = _by_name(store.spans, CALLER_TRACE)
    server = spans["POST /v1/rerank"]
    rerank = spans["rerank"]
    tokenize, queue_wait, inference = spans["tokenize"], spans["queue_wait"], spans["inference"]
    # One trace, nested: caller -> HTTP server span -> rerank -> the three stages.
    assert server.parent_span_id == CALLER_SPAN
    assert server.kind == ProtoSpan.SPAN_KIND_SERVER
    assert rerank.parent_span_id == server.span_id
    for stage in (tokenize, queue_wait, inference):
        assert stage.parent_span_id == rerank.span_id
        assert rerank.start_ns <= stage.start_ns <= stage.end_ns <= rerank.end_ns
    assert tokenize.end_ns <= queue_wait.start_ns
    assert queue_wait.end_ns <= inference.start_ns
    assert server.start_ns <= rerank.start_ns
    assert rerank.end_ns <= server.end_ns

    # The spans last what the timing headers say.
    headers = response.headers
    for span, header in (
        (tokenize, "x-tokenization-time"),
        (queue_wait, "x-queue-time"),
        (inference, "x-inference-time"),
    ):
        assert _milliseconds(span) == pytest.approx(float(headers[header]), abs=HEADER_ROUNDING_MS)

    assert rerank.attributes == {
        "reranker.request_id": headers["x-request-id"],
        "reranker.model": str(checkpoint),
        "reranker.documents": 3,
        "reranker.top_n": 2,
        "reranker.pairs": 3,
        "reranker.tokens": response.json()["usage"]["total_tokens"],
    }
    assert not rerank.failed
    assert tokenize.attributes == {
        "reranker.pairs": 3,
        "reranker.tokens": rerank.attributes["reranker.tokens"],
    }
    assert queue_wait.attributes == {"reranker.pairs": 3}
    # Three pairs in one pass; the two after the first read the shared prompt prefix.
    assert inference.attributes["reranker.passes"] == 1
    assert inference.attributes["reranker.pairs_per_pass"] == [3]
    assert inference.attributes["reranker.request_pairs_per_pass"] == [3]
    assert inference.attributes["reranker.devices"] == ["cpu"]
    reused = inference.attributes["reranker.prefix_reused_tokens"]
    assert reused > 0
    assert reused % 2 == 0
    [forward_pass] = inference.events
    assert forward_pass.name == "forward_pass"
    assert forward_pass.attributes["reused_tokens"] == reused
    assert rerank.resource["service.name"] == "reranker"
    assert rerank.resource["service.version"] == __version__

    # The request's log line points at its span.
    [completed] = [line for line in logs if line["event"] == "request_completed"]
    assert (completed["trace_id"], completed["span_id"]) == (CALLER_TRACE, rerank.span_id)

    # The latency bucket carries the trace as an exemplar, in OpenMetrics only.
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    assert _openmetrics_exemplars(openmetrics.text, "reranker_request_latency_seconds") == [
        CALLER_TRACE
    ]
    assert classic.headers["content-type"].startswith("text/plain")
    assert "trace_id" not in classic.text


async def test_errors_score_and_the_query_on_spans(
    checkpoint: Path, scoring_model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with otlp_http_receiver() as (endpoint, store):
        async with traced_client(
            checkpoint,
            scoring_model,
            monkeypatch,
            endpoint,
            max_documents=2,
            log_query_chars=4,
        ) as http:
            too_many = await http.post(
                "/rerank", json=BODY, headers={"traceparent": f"00-{'1' * 32}-{CALLER_SPAN}-01"}
            )
            scored = await http.post(
                "/score",
                json={"text_1": "capital", "text_2": ["paris", "rome"]},
                headers={"traceparent": f"00-{'2' * 32}-{CALLER_SPAN}-01"},
            )
    assert (too_many.status_code, scored.status_code) == (413, 200)

    refused = _by_name(store.spans, "1" * 32)
    assert set(refused) == {"POST /rerank", "rerank"}  # nothing reached the engine
    assert refused["rerank"].failed
    assert refused["rerank"].attributes["error.type"] == "payload_too_large"
    assert refused["rerank"].attributes["reranker.query"] == "what"

    score = _by_name(store.spans, "2" * 32)
    assert set(score) == {"POST /score", "score", "tokenize", "queue_wait", "inference"}
    assert score["score"].parent_span_id == score["POST /score"].span_id
    assert score["score"].attributes["reranker.documents"] == 2
    assert score["score"].attributes["reranker.query"] == "capi"
    assert not score["score"].failed


async def test_an_unsampled_caller_exports_nothing_but_its_trace_id_is_logged(
    checkpoint: Path, scoring_model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_sampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    with otlp_http_receiver() as (endpoint, store):
        async with traced_client(checkpoint, scoring_model, monkeypatch, endpoint) as http:
            with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
                response = await http.post(
                    "/rerank", json=BODY, headers={"traceparent": not_sampled}
                )
                sampled = await http.post("/rerank", json=BODY)
            openmetrics = await http.get("/metrics", headers={"Accept": OPENMETRICS})
    assert (response.status_code, sampled.status_code) == (200, 200)
    assert not [span for span in store.spans if span.trace_id == CALLER_TRACE]
    completed = [line for line in logs if line["event"] == "request_completed"]
    assert completed[0]["trace_id"] == CALLER_TRACE
    # The request without a caller started a trace of its own, sampled: its id is the exemplar.
    own_trace = completed[1]["trace_id"]
    assert own_trace != CALLER_TRACE
    assert _by_name(store.spans, own_trace)["rerank"].parent_span_id
    assert _openmetrics_exemplars(openmetrics.text, "reranker_request_latency_seconds") == [
        own_trace
    ]


def _otel_threads() -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.startswith("Otel")]


async def test_tracing_off_starts_nothing_and_marks_nothing(
    checkpoint: Path, scoring_model: ServedModel
) -> None:
    environ = {"OTEL_SERVICE_NAME": "reranker", "OTEL_TRACES_SAMPLER": "always_on"}
    assert TracingConfig.from_environ(environ) is None
    app = create_app(make_settings(checkpoint), model=scoring_model)
    async with asgi_client(app) as http:
        with structlog.testing.capture_logs(processors=[add_trace_ids]) as logs:
            response = await http.post("/rerank", json=BODY, headers={"traceparent": SAMPLED})
        threads = _otel_threads()
        openmetrics = await http.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.status_code == 200
    assert threads == []
    [completed] = [line for line in logs if line["event"] == "request_completed"]
    assert "trace_id" not in completed
    assert _openmetrics_exemplars(openmetrics.text, "reranker_request_latency_seconds") == []
    assert "traceparent" not in response.headers


@pytest.mark.parametrize(
    ("environ", "protocol"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "http/protobuf"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "grpc",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
            },
            "grpc",
        ),
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://c:4318"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}, None),
    ],
)
def test_the_standard_variables_decide_tracing(
    environ: Mapping[str, str], protocol: str | None
) -> None:
    config = TracingConfig.from_environ(environ)
    assert (config.protocol if config is not None else None) == protocol


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "udp"},
            "use one of grpc, http/protobuf",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "zipkin"},
            "over OTLP only",
        ),
    ],
)
def test_what_the_service_cannot_do_is_refused(environ: Mapping[str, str], message: str) -> None:
    with pytest.raises(TracingConfigError, match=message):
        TracingConfig.from_environ(environ)


def test_probes_are_left_out_unless_the_operator_says_otherwise() -> None:
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    config = TracingConfig.from_environ(endpoint)
    assert config is not None
    assert config.excluded_urls == "/health,/ready,/metrics"
    chosen = TracingConfig.from_environ(
        {**endpoint, "OTEL_PYTHON_FASTAPI_EXCLUDED_URLS": "/health"}
    )
    assert chosen is not None
    assert chosen.excluded_urls == "/health"


@contextlib.contextmanager
def _stopped_at_exit(service: Any) -> Iterator[Any]:
    try:
        yield service
    finally:
        service.stop()


@pytest.mark.slow
def test_prometheus_keeps_the_latency_exemplar(
    checkpoint: Path,
    scoring_model: ServedModel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """A real Prometheus with exemplar storage (as compose runs it) scrapes the service in the
    OpenMetrics format and keeps the request's trace id on its latency bucket: what Grafana's
    exemplar link reads."""
    with otlp_http_receiver() as (endpoint, _store):
        tracing = _tracing_from_environment(monkeypatch, endpoint)
        app = create_app(make_settings(checkpoint), model=scoring_model, tracing=tracing)
        with (
            serve_in_thread(app) as url,
            run_prometheus(
                tmp_path, url.removeprefix("http://"), features=["exemplar-storage"]
            ) as prometheus,
        ):
            started = time.time()
            response = httpx.post(
                f"{url}/rerank", json=BODY, headers={"traceparent": SAMPLED}, timeout=60
            )
            assert response.status_code == 200
            deadline = time.monotonic() + 60
            while not (
                found := prometheus.exemplars(
                    "reranker_request_latency_seconds_bucket", started - 5, time.time() + 5
                )
            ):
                assert time.monotonic() < deadline, "Prometheus kept no exemplar"
                time.sleep(0.2)
    [series] = found
    [exemplar] = series["exemplars"]
    assert exemplar["labels"] == {EXEMPLAR_TRACE_LABEL: CALLER_TRACE}
    assert float(exemplar["value"]) <= float(series["seriesLabels"]["le"])


@pytest.mark.slow
def test_the_service_exports_over_grpc_from_its_environment(checkpoint: Path) -> None:
    """``python -m reranker_service`` configured by OTEL_* variables alone: gRPC export, the
    service name, and trace ids on its JSON log lines (the access line included)."""
    with otlp_grpc_receiver() as (endpoint, store):
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_SERVICE_NAME": "reranker-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with _stopped_at_exit(start_service(checkpoint, env=environ)) as service:
            service.wait_for("tracing_enabled", protocol="grpc")
            with httpx.Client(base_url=service.base_url(), timeout=60) as http:
                response = http.post("/rerank", json=BODY, headers={"traceparent": SAMPLED})
                assert http.get("/health").status_code == 200
            assert response.status_code == 200
            spans = store.wait_for(
                lambda received: any(span.name == "inference" for span in received)
            )
            service.proc.send_signal(signal.SIGTERM)
            lines = service.finish()

    traced = _by_name(spans, CALLER_TRACE)
    assert {"POST /rerank", "rerank", "tokenize", "queue_wait", "inference"} <= set(traced)
    assert traced["POST /rerank"].parent_span_id == CALLER_SPAN
    assert traced["rerank"].resource["service.name"] == "reranker-under-test"
    assert not any(span.name.startswith("GET /health") for span in store.spans)
    [completed] = [line for line in lines if line["event"] == "request_completed"]
    assert (completed["trace_id"], completed["span_id"]) == (
        CALLER_TRACE,
        traced["rerank"].span_id,
    )
    [access] = [line for line in lines if line.get("path") == "/rerank"]
    assert access["event"] == "http_request"
    assert access["trace_id"] == CALLER_TRACE
    # Lines outside any request carry no trace.
    assert not any("trace_id" in line for line in lines if line["event"] == "service_ready")


@pytest.mark.slow
def test_the_service_with_tracing_disabled_exports_nothing(checkpoint: Path) -> None:
    """An endpoint set but the SDK disabled (``OTEL_SDK_DISABLED``, as an operator switches
    tracing off without touching the rest): the service starts no tracing, exports nothing by
    the time it has exited, and writes no trace ids."""
    with otlp_http_receiver() as (endpoint, store):
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SDK_DISABLED": "true"}
        with _stopped_at_exit(start_service(checkpoint, env=environ)) as service:
            with httpx.Client(base_url=service.base_url(), timeout=60) as http:
                response = http.post("/rerank", json=BODY, headers={"traceparent": SAMPLED})
            assert response.status_code == 200
            service.proc.send_signal(signal.SIGTERM)
            lines = service.finish()
    assert service.proc.returncode == 0
    assert (store.requests, store.spans) == (0, [])
    assert not any(line["event"] == "tracing_enabled" for line in lines)
    assert not any("trace_id" in line for line in lines)


def test_span_store_waits_for_what_it_is_told() -> None:
    """The receiver's wait fails when what it waits for never comes (so tests relying on it
    can fail)."""
    store = SpanStore()
    with pytest.raises(AssertionError, match="spans received"):
        store.wait_for(lambda spans: bool(spans), timeout_s=0.05)


async def test_the_rerank_span_says_what_the_score_cache_did(
    checkpoint: Path, scoring_model: ServedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request answered from the cache: its span counts the hits, and it has no inference
    stage (no pass ran for it)."""
    with otlp_http_receiver() as (endpoint, store):
        async with traced_client(
            checkpoint, scoring_model, monkeypatch, endpoint, cache_size=1000
        ) as http:
            await http.post("/v1/rerank", json=BODY)
            cached = await http.post("/v1/rerank", json=BODY, headers={"traceparent": SAMPLED})
    assert cached.headers["x-reranker-cache"] == "hit"
    spans = _by_name(store.spans, CALLER_TRACE)
    assert spans["rerank"].attributes["cache.hits"] == 3
    assert spans["rerank"].attributes["cache.misses"] == 0
    assert "inference" not in spans
