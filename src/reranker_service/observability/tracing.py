"""OpenTelemetry tracing, set up once at start-up from the standard ``OTEL_*`` variables.

Off unless an OTLP endpoint is given (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``). This module reads only what decides whether tracing is
on and which exporter to build; the SDK's own classes read the rest of the standard variables
(endpoint, headers, timeout, compression, certificates, sampler, batch sizes, resource) as they
are constructed, here, once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from opentelemetry import trace
from opentelemetry.environment_variables import OTEL_TRACES_EXPORTER
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_PROTOCOL,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import format_span_id, format_trace_id
from structlog.typing import EventDict, WrappedLogger

OtlpProtocol = Literal["grpc", "http/protobuf"]
OTLP_PROTOCOLS: tuple[OtlpProtocol, ...] = ("grpc", "http/protobuf")
DEFAULT_SERVICE_NAME = "reranker"
# The OpenTelemetry specification's default; the Python SDK's auto-configuration uses it too.
_DEFAULT_PROTOCOL: OtlpProtocol = "http/protobuf"
# Probes and scrapes would bury the traces of real requests; OTEL_PYTHON_FASTAPI_EXCLUDED_URLS
# (or OTEL_PYTHON_EXCLUDED_URLS) replaces this list.
_DEFAULT_EXCLUDED_URLS = "/health,/ready,/metrics"
_EXCLUDED_URLS_VARIABLES = ("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", "OTEL_PYTHON_EXCLUDED_URLS")


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable asks for something this service cannot do; for the operator."""


@dataclass(frozen=True)
class TracingConfig:
    protocol: OtlpProtocol
    excluded_urls: str
    """Comma-separated regular expressions of URLs the HTTP server spans leave out."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> TracingConfig | None:
        """The tracing the environment asks for; None when tracing is off."""
        if environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
            return None
        exporter = environ.get(OTEL_TRACES_EXPORTER, "otlp").strip().lower() or "otlp"
        if exporter == "none":
            return None
        if exporter != "otlp":
            raise TracingConfigError(
                f"{OTEL_TRACES_EXPORTER}={exporter!r}: this service exports traces over OTLP "
                "only ('otlp' or 'none')"
            )
        if not (
            environ.get(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)
            or environ.get(OTEL_EXPORTER_OTLP_ENDPOINT)
        ):
            return None
        protocol = (
            environ.get(OTEL_EXPORTER_OTLP_TRACES_PROTOCOL)
            or environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
            or _DEFAULT_PROTOCOL
        ).strip()
        if protocol not in OTLP_PROTOCOLS:
            raise TracingConfigError(
                f"OTLP protocol {protocol!r} ({OTEL_EXPORTER_OTLP_TRACES_PROTOCOL} or "
                f"{OTEL_EXPORTER_OTLP_PROTOCOL}): use one of {', '.join(OTLP_PROTOCOLS)}"
            )
        excluded = next(
            (environ[name] for name in _EXCLUDED_URLS_VARIABLES if environ.get(name)),
            _DEFAULT_EXCLUDED_URLS,
        )
        return cls(protocol=protocol, excluded_urls=excluded)


def _otlp_exporter(protocol: OtlpProtocol) -> SpanExporter:
    """Each exporter reads its endpoint, headers, timeout, compression and TLS files from the
    standard variables itself. Imported here: the gRPC one loads grpcio."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter()


def service_resource(service_version: str) -> Resource:
    """``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, with ``reranker`` as the service
    name and this release as its version where they say nothing."""
    resource = Resource({SERVICE_VERSION: service_version}).merge(Resource.create())
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource


@dataclass(frozen=True)
class Tracing:
    """Tracing while the service runs: the provider its spans go to, and what it leaves out."""

    provider: TracerProvider
    excluded_urls: str

    def shutdown(self) -> None:
        """Export what is still buffered and stop the exporting thread; blocking."""
        self.provider.shutdown()


def start_tracing(
    config: TracingConfig, *, service_version: str, exporter: SpanExporter | None = None
) -> Tracing:
    """A provider exporting in batches from a thread of its own (``OTEL_BSP_*``), sampling as
    ``OTEL_TRACES_SAMPLER`` says (default: follow the caller, else sample all). ``exporter``
    replaces the OTLP one. Not installed as the global provider: the app is handed it."""
    provider = TracerProvider(resource=service_resource(service_version))
    provider.add_span_processor(
        BatchSpanProcessor(exporter if exporter is not None else _otlp_exporter(config.protocol))
    )
    return Tracing(provider, config.excluded_urls)


def add_trace_ids(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current span's trace and span ids, as trace backends print them
    (32 and 16 lowercase hex characters), on every line written inside a span."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format_trace_id(context.trace_id))
        event_dict.setdefault("span_id", format_span_id(context.span_id))
    return event_dict


def sampled_trace_id(span: trace.Span) -> str | None:
    """The trace id of a span that is being recorded and exported, else None: an exemplar
    pointing at a trace that was not kept would lead nowhere."""
    context = span.get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return format_trace_id(context.trace_id)
