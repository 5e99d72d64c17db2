"""OTLP trace receivers on 127.0.0.1, in place of an OpenTelemetry collector (none can be
installed here): one speaks OTLP/HTTP (protobuf bodies, gzip or not), one OTLP/gRPC. Both decode
what they get with ``opentelemetry-proto``, the collector's own message definitions."""

from __future__ import annotations

import contextlib
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

TRACES_PATH = "/v1/traces"
WAIT_S = 30


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind is not None else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    kind: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    events: list[ReceivedEvent]
    resource: dict[str, Any]

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def failed(self) -> bool:
        return self.status_code == Status.STATUS_CODE_ERROR


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    received = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                received.append(_received(span, resource))
    return received


def _received(span: Span, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        start_ns=span.start_time_unix_nano,
        end_ns=span.end_time_unix_nano,
        kind=span.kind,
        attributes=_attributes(span.attributes),
        status_code=span.status.code,
        status_message=span.status.message,
        events=[
            ReceivedEvent(event.name, event.time_unix_nano, _attributes(event.attributes))
            for event in span.events
        ],
        resource=resource,
    )


class SpanStore:
    """What a receiver got, for the test thread to wait on."""

    def __init__(self) -> None:
        self._spans: list[ReceivedSpan] = []
        self._changed = threading.Condition()
        self.requests = 0

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self._changed:
            self.requests += 1
            self._spans.extend(_spans(request))
            self._changed.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(
        self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = WAIT_S
    ) -> list[ReceivedSpan]:
        """Every span received, once ``done`` holds for them."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self._spans):
                left = deadline - time.monotonic()
                assert left > 0, f"spans received: {[span.name for span in self._spans]}"
                self._changed.wait(left)
            return list(self._spans)

    def trace(self, trace_id: str) -> dict[str, ReceivedSpan]:
        """The spans of one trace, by name (each name once)."""
        found = [span for span in self.spans if span.trace_id == trace_id]
        by_name = {span.name: span for span in found}
        assert len(by_name) == len(found), [span.name for span in found]
        return by_name


class _HttpHandler(BaseHTTPRequestHandler):
    store: SpanStore

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        if self.path != TRACES_PATH or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(404 if self.path != TRACES_PATH else 415)
            return
        request = trace_service_pb2.ExportTraceServiceRequest()
        request.ParseFromString(body)
        self.server_store.add(request)
        answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    @property
    def server_store(self) -> SpanStore:
        store: SpanStore = self.server.store  # type: ignore[attr-defined]
        return store

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def otlp_http_receiver(port: int = 0) -> Iterator[tuple[str, SpanStore]]:
    """Yield the receiver's base URL (what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes) and its
    store."""
    store = SpanStore()
    server = ThreadingHTTPServer(("127.0.0.1", port), _HttpHandler)
    server.store = store  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", store
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, store: SpanStore) -> None:
        self._store = store

    def Export(  # noqa: N802 - the generated service's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._store.add(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def otlp_grpc_receiver() -> Iterator[tuple[str, SpanStore]]:
    """Yield the receiver's endpoint (``http://`` for a plaintext channel) and its store."""
    store = SpanStore()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(store), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        server.stop(grace=None).wait(timeout=10)
