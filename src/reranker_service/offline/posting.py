"""How a line reaches its route: over HTTP to a running service, or straight into the app's ASGI
interface in this process, as uvicorn would call it, without a socket or an HTTP client."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import httpx
from starlette.types import ASGIApp, Message


@dataclass(frozen=True)
class Reply:
    status_code: int
    headers: Mapping[str, str]
    """Lowercase names."""
    body: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class UnreachableError(Exception):
    """No answer came: the service could not be reached, or did not answer in time."""

    def __init__(self, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Poster(Protocol):
    async def request(
        self, method: str, route: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Reply:
        """The route's answer; ``UnreachableError`` when none came."""
        ...


class HttpPoster:
    """A running service (or a load balancer in front of several), through ``client``."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def request(
        self, method: str, route: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Reply:
        try:
            response = await self._client.request(
                method, route, content=body, headers=dict(headers or {})
            )
        except httpx.TransportError as exc:
            message = str(exc) or type(exc).__name__
            raise UnreachableError(
                message, timed_out=isinstance(exc, httpx.TimeoutException)
            ) from exc
        return Reply(response.status_code, response.headers, response.content)


class AsgiPoster:
    """The app in this process, called as a server calls it: one ``http`` scope per line, the
    body in one message, and a disconnect only once the answer is complete (so that the
    app's watch for clients that hang up never fires)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def request(
        self, method: str, route: str, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Reply:
        raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ]
        raw_headers.append((b"content-length", str(len(body)).encode()))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": route,
            "raw_path": route.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": raw_headers,
            "client": ("127.0.0.1", 0),
            "server": ("in-process", 80),
        }
        answered = asyncio.Event()
        request_sent = False
        status_code = 0
        reply_headers: dict[str, str] = {}
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal request_sent
            if not request_sent:
                request_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await answered.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                reply_headers.update(
                    (name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in message.get("headers", [])
                )
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    answered.set()

        try:
            await self._app(scope, receive, send)
        except Exception:
            # Starlette answers an unhandled error with a 500 and raises it again for the
            # server to log: the answer stands; the app's handler has logged it already.
            if not answered.is_set():
                raise
        finally:
            answered.set()
        return Reply(status_code, reply_headers, b"".join(chunks))
