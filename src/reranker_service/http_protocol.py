"""uvicorn's HTTP/1.1 protocol with a deadline on request headers.

uvicorn times out a connection only while it idles after a response (``timeout_keep_alive``):
a client that sends its header bytes one at a time keeps its connection, and its file
descriptor, for as long as it likes, and a thousand such clients lock everyone out. This
subclass of uvicorn's own protocol class arms a timer whenever the connection waits for a
request's headers (from the connection's start, and again once a response has gone) and closes
the connection when the headers have not all arrived in time. Everything else is uvicorn's.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

_HTTPTOOLS = importlib.util.find_spec("httptools") is not None
if _HTTPTOOLS:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
else:  # pragma: no cover - uvicorn[standard] brings httptools
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Base  # type: ignore[assignment]


class HeaderDeadlineProtocol(_Base):
    """The protocol uvicorn would pick (httptools, else h11), with ``header_timeout``."""

    header_timeout: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_headers()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _awaiting_headers(self) -> bool:
        """No request in progress: the next bytes are a request's headers."""
        cycle = self.cycle
        return cycle is None or bool(cycle.response_complete)

    def _watch_headers(self) -> None:
        if not self._awaiting_headers():
            self._disarm()
        elif self._header_deadline is None:
            self._header_deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        if self._awaiting_headers() and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(header_timeout: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with this deadline."""
    return type(
        "HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": header_timeout}
    )
