"""Pure ASGI middleware (no BaseHTTPMiddleware): request ids and the body-size limit."""

from __future__ import annotations

import re
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reranker_service.api.protocol import ErrorBody, ErrorResponse
from reranker_service.api.record import note_error

REQUEST_ID_HEADER = "x-request-id"
_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestIdMiddleware:
    """Adopt the client's ``X-Request-ID`` if it is sane, else mint one; bind it for logs and
    put it on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        offered = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                offered = value.decode("latin-1")
                break
        request_id = offered if _ACCEPTABLE_REQUEST_ID.match(offered) else str(uuid.uuid4())
        # A state dict of this request's own: servers should copy the lifespan state per
        # request, but not every ASGI host does, and request-scoped values must never be shared.
        scope["state"] = {**scope.get("state", {}), "request_id": request_id}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class BodyTooLargeError(StarletteHTTPException):
    """Raised from ``receive``; an HTTPException so FastAPI's body reader lets it through to
    the error handlers instead of turning it into a generic 400."""

    def __init__(self, limit: int, received: int) -> None:
        super().__init__(413, f"request body exceeds {limit} bytes")
        self.limit = limit
        self.received = received

    def body(self) -> ErrorBody:
        return ErrorBody(
            type="payload_too_large",
            message=str(self.detail),
            field="body",
            limit=self.limit,
            value=self.received,
        )


class BodySizeLimitMiddleware:
    """Answer 413 before the body is parsed: on Content-Length, or once the streamed body
    passes the limit."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_body_bytes:
                    await self._reject(scope, send, declared)
                    return
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLargeError(self.max_body_bytes, received)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if not response_started:
                await self._reject(scope, send, received)

    async def _reject(self, scope: Scope, send: Send, size: int) -> None:
        body = BodyTooLargeError(self.max_body_bytes, size).body()
        body.request_id = scope.get("state", {}).get("request_id")
        note_error(scope, body.type)
        payload = ErrorResponse(error=body).model_dump_json(exclude_none=True).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
