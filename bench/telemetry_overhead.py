"""What metrics, logging and tracing cost per request: the same service with and without them.

    python bench/telemetry_overhead.py                      # builds the tiny test checkpoint
    python bench/telemetry_overhead.py --model /path/to/checkpoint --device cuda

Three apps over one loaded model, each under real uvicorn on 127.0.0.1:
- "tracing on": as shipped with tracing on, every request sampled (``parentbased_always_on``,
  the default), its spans exported over OTLP/HTTP to a local receiver that drops them;
- "as shipped": tracing off (no OTLP endpoint), request and batch metrics, the request's JSON
  line rendered in full and written to /dev/null;
- "without telemetry": built with ``instrument_requests=False``.
uvicorn's access line is written by all: whether uvicorn logs access is process-wide, so its
cost is timed alone below instead. One client sends requests back to back, going round the
three in rounds (in turning order) so that drift of the machine hits all alike. Prints latency
percentiles per variant and the differences, then the cost of each part timed alone (steadier
than a difference on a noisy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from checkout import use_tests_support
from reranker_service.api.record import RerankRecord
from reranker_service.api.request_spans import RequestSpans
from reranker_service.app import create_app, load_options
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.rerank_engine import RerankOutcome
from reranker_service.engine.scheduler.jobs import PassShare
from reranker_service.observability.logging import configure_logging
from reranker_service.observability.metrics import ServiceMetrics
from reranker_service.observability.tracing import TracingConfig, sampled_trace_id, start_tracing
from reranker_service.settings import Settings
from reranker_service.tiny_checkpoint import build_checkpoint


@dataclass(frozen=True)
class Variant:
    name: str
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def _summary(name: str, latencies: list[float]) -> Variant:
    cuts = statistics.quantiles(latencies, n=100)
    return Variant(
        name=name,
        requests=len(latencies),
        p50_ms=round(statistics.median(latencies) * 1000, 3),
        p90_ms=round(cuts[89] * 1000, 3),
        p99_ms=round(cuts[98] * 1000, 3),
        mean_ms=round(statistics.fmean(latencies) * 1000, 3),
    )


class _DroppingReceiver(BaseHTTPRequestHandler):
    """Answers OTLP/HTTP exports as a collector does (200, an empty export response: zero
    bytes of protobuf) and keeps nothing."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def _otlp_sink() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _DroppingReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _microseconds_each(action: Callable[[], object], repeats: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        action()
    return round((time.perf_counter() - started) / repeats * 1e6, 1)


class _DroppingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _traced_request() -> Callable[[], None]:
    """What tracing adds to one request in the service's own code (the HTTP server span and
    the export are not in it): its span opened, then closed with a one-pass outcome's stages."""
    tracing = start_tracing(
        TracingConfig("http/protobuf", ""), service_version="bench", exporter=_DroppingExporter()
    )
    spans = RequestSpans(
        tracing.provider.get_tracer("bench"), span_names={"/rerank": "rerank"}, query_chars=0
    )
    now = time.perf_counter()
    record = RerankRecord(
        model="bench",
        doc_count=4,
        query="what is the capital of france",
        outcome=RerankOutcome(
            scores=[0.9, 0.1, 0.5, 0.2],
            pair_tokens=[75] * 4,
            windows=[1] * 4,
            started_at=now,
            tokenize_seconds=0.0004,
            queued_at=now + 0.0004,
            queue_seconds=0.0001,
            inference_seconds=0.005,
            engine_seconds=0.0056,
            passes=(PassShare(now + 0.0005, 0.005, 4, 4, 150, "cpu"),),
        ),
    )

    def request() -> None:
        with spans.open("/rerank") as span:
            spans.close(span, record, request_id="0f8e2a41-bench", error=None)

    return request


def _part_costs() -> dict[str, float]:
    """Each per-request piece of telemetry alone, in microseconds (logging must be configured)."""
    requests_log = structlog.get_logger("reranker_service.requests")
    access_log = logging.getLogger("uvicorn.access")
    metrics = ServiceMetrics(models=["bench"])
    with structlog.contextvars.bound_contextvars(request_id="0f8e2a41-bench"):
        return {
            "request_completed line": _microseconds_each(
                lambda: requests_log.info(
                    "request_completed",
                    status=200,
                    model="bench",
                    doc_count=4,
                    tokens=300,
                    latency_ms=12.3,
                    tokenize_ms=0.4,
                    queue_ms=0.1,
                    inference_ms=5.0,
                    top1_score=0.9,
                    score_std=0.1,
                    top_n=None,
                )
            ),
            "uvicorn access line": _microseconds_each(
                lambda: access_log.info(
                    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/rerank", "1.1", 200
                )
            ),
            "dropped debug line": _microseconds_each(
                lambda: requests_log.debug("rerank_started", doc_count=4)
            ),
            "tracing off: the request's span checks": _microseconds_each(
                lambda: sampled_trace_id(trace.INVALID_SPAN)
            ),
            "tracing on: the request's four spans, written": _microseconds_each(
                _traced_request(), repeats=5_000
            ),
            "request metrics": _microseconds_each(
                lambda: metrics.record_success(
                    model="bench",
                    latency_seconds=0.012,
                    documents=4,
                    tokens=300,
                    top1_score=0.9,
                    score_stddev=0.1,
                )
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint; default: build the tiny test checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=4, help="documents per request")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests-per-round", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    use_tests_support()
    from tests.support.local_server import serve_in_thread

    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory() as scratch:
        configure_logging("info", "json", stream=sink)
        model_path = args.model or str(build_checkpoint(Path(scratch) / "tiny"))
        settings = Settings(model=model_path, device=args.device, host="127.0.0.1")
        model = load_single_device_model(load_options(settings))
        body = {
            "query": "what is the capital of france",
            "documents": [
                f"document {i}: paris is the capital of france" for i in range(args.docs)
            ],
        }
        latencies: dict[str, list[float]] = {}
        with contextlib.ExitStack() as running:
            endpoint = running.enter_context(_otlp_sink())
            tracing_config = TracingConfig.from_environ({"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
            assert tracing_config is not None
            # The exporter reads its endpoint from the environment, as in the service.
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
            tracing = start_tracing(tracing_config, service_version="bench")
            apps = {
                "tracing on": create_app(settings, model=model, tracing=tracing),
                "as shipped": create_app(settings, model=model),
                "without telemetry": create_app(settings, model=model, instrument_requests=False),
            }
            clients = {
                name: running.enter_context(
                    httpx.Client(base_url=running.enter_context(serve_in_thread(app)), timeout=60)
                )
                for name, app in apps.items()
            }
            for client in clients.values():  # warm every path and the connections
                for _ in range(20):
                    client.post("/rerank", json=body).raise_for_status()
            names = list(clients)
            latencies = {name: [] for name in names}
            for round_index in range(args.rounds):
                shift = round_index % len(names)
                for name in names[shift:] + names[:shift]:
                    for _ in range(args.requests_per_round):
                        started = time.perf_counter()
                        clients[name].post("/rerank", json=body).raise_for_status()
                        latencies[name].append(time.perf_counter() - started)
        parts = _part_costs()

    variants = {name: _summary(name, values) for name, values in latencies.items()}
    print(
        f"model: {args.model or 'tiny test checkpoint'} on {args.device}; machine: "
        f"{platform.machine()}, {os.cpu_count()} cpus; {args.docs} docs/request; "
        f"{args.rounds} rounds of {args.requests_per_round} sequential requests per variant"
    )
    print("| variant | requests | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants.values():
        print(f"| {v.name} | {v.requests} | {v.p50_ms} | {v.p90_ms} | {v.p99_ms} | {v.mean_ms} |")
    for more, less in (("as shipped", "without telemetry"), ("tracing on", "as shipped")):
        a, b = variants[more], variants[less]
        print(
            f"{more} vs {less}: p50 {a.p50_ms - b.p50_ms:+.3f} ms "
            f"({(a.p50_ms / b.p50_ms - 1) * 100:+.1f} %), mean {a.mean_ms - b.mean_ms:+.3f} ms "
            f"({(a.mean_ms / b.mean_ms - 1) * 100:+.1f} %)"
        )
    print("| part, timed alone | µs per request |")
    print("|---|---:|")
    for part, microseconds in parts.items():
        print(f"| {part} | {microseconds} |")
    if args.json:
        results = {"variants": [asdict(v) for v in variants.values()], "parts_us": parts}
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
