"""What one scoring request did, filled in while it runs: the record that its metrics, its log
line and its span are written from.

The middleware in front of the scoring routes attaches one to each request's scope; the route,
the error handlers and the body-size check fill it in. A scoring route without one is a wiring
error, not a request to serve unwatched.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from reranker_service.engine.rerank_engine import RerankOutcome

_RECORD_KEY = "rerank_record"


@dataclass
class RerankRecord:
    """What one rerank request did, filled in while it runs."""

    error: str | None = None
    """The error body's ``type``, once an error response is built."""
    model: str | None = None
    """The served model's name, once the request has been given one."""
    doc_count: int | None = None
    query: str | None = None
    top_n: int | None = None
    outcome: RerankOutcome | None = None
    """What the engine did: scores, tokens, windows and where the time went."""
    top1_probability: float | None = None
    """The best document's P(yes), whatever score format the response carries."""
    probability_stddev: float | None = None
    """The spread of the documents' P(yes) (None for fewer than two documents)."""


class MissingRecordError(RuntimeError):
    """A scoring route ran without a record: its path is not among the watched ones."""


def attach_record(scope: Scope) -> RerankRecord:
    """A new record for the request of ``scope``."""
    record = RerankRecord()
    scope.setdefault("state", {})[_RECORD_KEY] = record
    return record


def record_of(scope: Scope) -> RerankRecord | None:
    """The request's record, if its route is a scoring one."""
    record = scope.get("state", {}).get(_RECORD_KEY)
    return record if isinstance(record, RerankRecord) else None


def required_record(scope: Scope) -> RerankRecord:
    """The record of a scoring request; a scoring route without one is a wiring error."""
    record = record_of(scope)
    if record is None:
        raise MissingRecordError(
            f"{scope.get('path')} scores without a request record: scoring routes belong on "
            "the scoring router, whose paths the record middleware watches"
        )
    return record


def note_error(scope: Scope, error_type: str) -> None:
    """Put an error answer's type on the request's record, if it has one."""
    record = record_of(scope)
    if record is not None:
        record.error = error_type


class RecordMiddleware:
    """Attaches a record to each request on ``paths``, when no telemetry does: the service
    built without per-request telemetry (the benchmark's baseline)."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str]) -> None:
        self.app = app
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self._paths:
            attach_record(scope)
        await self.app(scope, receive, send)
