"""A lean HTTP/1.1 load client: kept-alive connections on asyncio streams, one per concurrent
caller, requests written as bytes, responses read by ``Content-Length``.

On a small machine the load generator shares the cores with the service; a general-purpose
client (httpx) spends about as much CPU per request as the server does, and that time would be
billed to the service. This one does what ``wrk`` does and no more: bodies are read by
``Content-Length`` or chunked encoding, and there is no TLS, redirect or proxy support.
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any


class HttpError(Exception):
    """A response that is not 2xx, or a connection that broke mid-response."""


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    """Lower-case names; a repeated header keeps its last value."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> HttpResponse:
        self.writer.write(request)
        status_line = await self.reader.readuntil(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError(f"not an HTTP/1.x status line: {status_line!r}")
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            raise HttpError("response with neither Content-Length nor chunked encoding")
        return HttpResponse(int(parts[1]), headers, body)

    async def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)  # the chunk's CRLF
        while await self.reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        return b"".join(chunks)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class KeepAliveClient:
    """Up to ``max_connections`` kept-alive connections to one host; a caller takes an idle
    one or opens a new one, and gives it back after the response."""

    def __init__(self, host: str, port: int, *, max_connections: int = 256) -> None:
        self._host = host
        self._port = port
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def request(
        self, method: str, path: str, *, body: bytes = b"", content_type: str | None = None
    ) -> HttpResponse:
        head = f"{method} {path} HTTP/1.1\r\nhost: {self._host}\r\ncontent-length: {len(body)}\r\n"
        if content_type is not None:
            head += f"content-type: {content_type}\r\n"
        payload = head.encode("latin-1") + b"\r\n" + body
        async with self._slots:
            connection = await self._idle_connection()
            reused = connection is not None
            if connection is None:
                connection = await self._open()
            try:
                response = await connection.exchange(payload)
            except asyncio.IncompleteReadError as exc:
                await connection.close()
                if not (reused and not exc.partial):
                    raise
                # The server closed the kept-alive connection as we reused it (idle timeout)
                # and answered nothing: the request never reached it, so send it afresh.
                connection = await self._open()
                response = await connection.exchange(payload)
            except BaseException:
                await connection.close()  # its state is unknown: never reuse it
                raise
            if response.headers.get("connection", "").lower() == "close":
                await connection.close()
            else:
                self._idle.append(connection)
        return response

    async def post_json(self, path: str, document: Any) -> HttpResponse:
        return await self.request(
            "POST", path, body=json.dumps(document).encode(), content_type="application/json"
        )

    async def get(self, path: str) -> HttpResponse:
        return await self.request("GET", path)

    async def _idle_connection(self) -> _Connection | None:
        """An idle connection the server has not closed (servers drop idle keep-alive
        connections after a few seconds), or None."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.reader.at_eof():
                return connection
            await connection.close()
        return None

    async def _open(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self._host, self._port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(reader, writer)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()
