"""The lines of a batch file: what each asks for, and what its answer line says.

An input line is a rerank request body in the shape of the route it goes to (``/rerank``'s
unless told otherwise), with an optional ``custom_id``, or an OpenAI-batch-style envelope
``{"custom_id", "method", "url", "body"}``. A line is sent to its route as it is: a line that
is not JSON, or not a valid request, gets the route's own error answer, as an HTTP client
would. Only an envelope that names no route we serve is refused here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

ROUTES: Final = frozenset({"/rerank", "/v1/rerank", "/v2/rerank", "/score"})
"""The routes a line may name."""
_ROUTE_ALIASES: Final = {"/v1/score": "/score"}
"""vLLM's batch runner names ``/score`` with its version prefix."""
_DOCUMENT_FIELDS: Final = ("documents", "texts", "text_2")
"""Where the documents of a body are, by shape: Cohere's, TEI's, vLLM's ``/score``."""


@dataclass(frozen=True)
class LineError:
    """Why a line could not be sent, in the shape of the service's error bodies."""

    type: str
    message: str
    field: str | None = None

    def as_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.field is not None:
            shown["field"] = self.field
        return shown


@dataclass(frozen=True)
class BatchLine:
    """One input line, ready to send."""

    number: int
    """1-based, counting every line of the file (blank ones too)."""
    custom_id: str | None
    route: str
    body: bytes
    """What is POSTed: the line itself, or an envelope's ``body``."""
    pairs: int
    """(query, document) pairs it asks to score, as far as its JSON says (0 when it says
    nothing): for the pairs-in-flight bound and the pairs/s figure."""
    refused: LineError | None = None
    """Set when the line cannot be sent at all (an envelope naming no route we serve)."""

    @property
    def key(self) -> LineKey:
        return line_key(self.custom_id, self.number)


LineKey = tuple[str, str | int]
"""What a resumed run recognises an answered line by: its ``custom_id``, else its number."""


def line_key(custom_id: str | None, number: int) -> LineKey:
    return ("custom_id", custom_id) if custom_id is not None else ("line", number)


def _custom_id(value: Any) -> str | LineError | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return LineError("validation", "custom_id: give a string", field="custom_id")


def _pairs(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    for field in _DOCUMENT_FIELDS:
        documents = body.get(field)
        if isinstance(documents, list):
            return len(documents)
    return 0


def _envelope_route(envelope: dict[str, Any]) -> str | LineError:
    method = envelope.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        return LineError("validation", "method: the rerank routes take POST", field="method")
    url = envelope.get("url")
    route = _ROUTE_ALIASES.get(url, url) if isinstance(url, str) else None
    if route not in ROUTES:
        served = ", ".join(sorted(ROUTES))
        return LineError("validation", f"url: give one of {served}", field="url")
    return route


def _is_envelope(parsed: Any) -> bool:
    return isinstance(parsed, dict) and "body" in parsed and "url" in parsed


def parse_line(number: int, raw: bytes, default_route: str) -> BatchLine:
    """The line as it will be sent. Never raises: what is wrong with it is for its route to
    answer, or (for an envelope naming no route we serve) in ``refused``."""
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return BatchLine(number, None, default_route, raw, 0)
    custom_id = _custom_id(parsed.get("custom_id")) if isinstance(parsed, dict) else None
    if isinstance(custom_id, LineError):
        return BatchLine(number, None, default_route, raw, 0, refused=custom_id)
    if not _is_envelope(parsed):
        return BatchLine(number, custom_id, default_route, raw, _pairs(parsed))
    route = _envelope_route(parsed)
    if isinstance(route, LineError):
        return BatchLine(number, custom_id, default_route, raw, 0, refused=route)
    body = parsed["body"]
    return BatchLine(number, custom_id, route, json.dumps(body).encode(), _pairs(body))


@dataclass(frozen=True)
class Answer:
    """What the route answered a line (or why it could not be asked)."""

    line: BatchLine
    status_code: int | None
    """None: no HTTP answer (refused here, or the service could not be reached)."""
    body: Any
    """The response body, parsed; None without one."""
    request_id: str | None = None
    error: dict[str, Any] | None = None
    """The route's error object (``type``, ``message``, ``field``...), for a failed line."""

    @property
    def failed(self) -> bool:
        return self.error is not None

    def output_line(self) -> bytes:
        """The line written for it, in OpenAI's batch output shape: ``response`` holds the
        route's answer (its error body too), ``error`` the error object of a failed line."""
        response = None
        if self.status_code is not None:
            response = {
                "status_code": self.status_code,
                "request_id": self.request_id,
                "body": self.body,
            }
        shown = {
            "custom_id": self.line.custom_id,
            "line": self.line.number,
            "response": response,
            "error": self.error,
        }
        # ASCII with escapes: a text may hold a lone surrogate (valid in JSON's \u escapes, which
        # the routes accept and echo), which UTF-8 cannot encode.
        return json.dumps(shown).encode() + b"\n"


def error_object(body: Any, status_code: int) -> dict[str, Any]:
    """The error a failed answer carries, whichever wire shape its route speaks: our
    ``{"error": {type, message, ...}}``, or TEI's ``{"error", "error_type"}``."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "type" in error:
            return error
        if isinstance(error, str) and isinstance(body.get("error_type"), str):
            return {"type": body["error_type"], "message": error}
    return {"type": "http_error", "message": f"HTTP {status_code}"}
