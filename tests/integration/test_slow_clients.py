"""Idle and slow connections are bounded: 500 clients trickling header bytes against the real
process cannot lock a normal client out, and their connections are closed at the header
deadline.

Nothing here is judged against a wall-clock budget, which a busy machine would overrun: the
normal request must be answered while every trickler still holds its connection, and each
connection must be closed no sooner than the deadline after it opened (a clock read on this
side, before the server could start its timer) and, in the end, closed. Nothing else closes
them: the keep-alive timer runs only after a response, and none is sent to them.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.service_process import start_service

pytestmark = pytest.mark.slow  # starts a real server process

TRICKLERS = 500
HEADER_TIMEOUT = 5.0
"""Long enough that opening 500 connections and answering one request on a busy machine fit
well within it, so that the normal request is answered while the tricklers are held."""
TRICKLE_INTERVAL_S = 0.1
"""A byte this often on each connection: the trickle's pace, and how long each round waits for
the server to close connections."""
GIVE_UP_AFTER_S = 10 * HEADER_TIMEOUT
"""Only a failing run waits this long: a server that does not enforce the deadline never closes
a trickling connection."""
HEADERS_BEGUN = b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: "
"""What each trickler sends first; then its last header's value, a byte at a time, which never
ends: a valid request that is never complete, so only the deadline can close it."""


def _trickle(sockets: list[socket.socket], sent: int) -> None:
    """One more header byte on every connection still open."""
    byte = HEADERS_BEGUN[sent : sent + 1] or b"a"
    for connection in sockets:
        with contextlib.suppress(OSError):  # closed by the server: what the test waits for
            connection.send(byte)


def _closed(connection: socket.socket) -> bool:
    """Whether the server has closed the connection (EOF or reset), without blocking. It must
    not have answered: the request is not complete."""
    connection.setblocking(False)
    try:
        received = connection.recv(1024)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        connection.setblocking(True)
    assert received == b"", f"the server answered a trickler: {received[:80]!r}"
    return True


def test_trickling_clients_are_cut_at_the_header_deadline(checkpoint: Path) -> None:
    service = start_service(checkpoint, "--header-timeout-seconds", str(HEADER_TIMEOUT))
    opened_at: dict[socket.socket, float] = {}
    open_for: list[float] = []
    """Per connection, the seconds from its opening to the server closing it (seen)."""
    try:
        base_url = service.base_url()
        address = urlsplit(base_url)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        for _ in range(TRICKLERS):
            # Read before connecting: the server cannot start its timer any earlier.
            connecting = time.monotonic()
            opened_at[socket.create_connection((host, port), timeout=5)] = connecting
        sockets = list(opened_at)
        sent = 0
        with httpx.Client(base_url=base_url, timeout=30) as http:
            _trickle(sockets, sent)
            sent += 1
            answer = http.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
        cut_before_the_answer = sum(1 for connection in sockets if _closed(connection))
        assert answer.status_code == 200
        assert cut_before_the_answer == 0, (
            f"the normal request was answered only after {cut_before_the_answer} tricklers were cut"
        )
        # Keep trickling while waiting for the server to close each connection.
        with selectors.DefaultSelector() as waiting:
            for connection in sockets:
                waiting.register(connection, selectors.EVENT_READ, data=connection)
            give_up = time.monotonic() + GIVE_UP_AFTER_S
            while waiting.get_map() and time.monotonic() < give_up:
                _trickle([key.data for key in waiting.get_map().values()], sent)
                sent += 1
                for key, _ in waiting.select(timeout=TRICKLE_INTERVAL_S):
                    if _closed(key.data):
                        open_for.append(time.monotonic() - opened_at[key.data])
                        waiting.unregister(key.data)
            still_open = len(waiting.get_map())
    finally:
        for connection in opened_at:
            connection.close()
        service.stop()
    assert still_open == 0, f"{still_open} of {TRICKLERS} trickling connections still open"
    assert min(open_for) >= HEADER_TIMEOUT, (
        f"a connection was closed {min(open_for):.2f} s after it opened, before the deadline"
    )
