"""Idle and slow connections are bounded: 500 clients trickling header bytes against the real
process cannot lock a normal client out, and their connections are closed at the header
deadline."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.service_process import start_service

pytestmark = pytest.mark.slow  # starts a real server process

TRICKLERS = 500
HEADER_TIMEOUT = 2.0
REQUEST_LINE = b"POST /rerank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _trickle(sockets: list[socket.socket], sent: int) -> None:
    """One more header byte on every connection still open."""
    byte = REQUEST_LINE[sent % len(REQUEST_LINE) : sent % len(REQUEST_LINE) + 1]
    for connection in sockets:
        with contextlib.suppress(OSError):  # closed by the server: what the test waits for
            connection.send(byte)


def _closed(connection: socket.socket) -> bool:
    """Whether the server has closed the connection (EOF or reset), without blocking."""
    readable, _, _ = select.select([connection], [], [], 0)
    if not readable:
        return False
    try:
        return connection.recv(1024) == b""
    except OSError:
        return True


def test_trickling_clients_are_cut_at_the_header_deadline(checkpoint: Path) -> None:
    service = start_service(checkpoint, "--header-timeout-seconds", str(HEADER_TIMEOUT))
    sockets: list[socket.socket] = []
    try:
        base_url = service.base_url()
        address = urlsplit(base_url)
        host, port = address.hostname or "127.0.0.1", address.port or 80
        for _ in range(TRICKLERS):
            sockets.append(socket.create_connection((host, port), timeout=5))
        opened = time.monotonic()
        sent = 0
        with httpx.Client(base_url=base_url, timeout=10) as http:
            _trickle(sockets, sent)
            sent += 1
            started = time.perf_counter()
            answer = http.post("/rerank", json={"query": "q", "documents": ["a", "b"]})
            normal_seconds = time.perf_counter() - started
        assert answer.status_code == 200
        assert normal_seconds < 1.0, f"a normal request took {normal_seconds:.2f} s"
        # Keep trickling, a byte every 0.1 s, until the deadline has passed for all (bounded).
        while time.monotonic() - opened < HEADER_TIMEOUT + 3:
            _trickle(sockets, sent)
            sent += 1
            if all(_closed(connection) for connection in sockets):
                break
            time.sleep(0.1)  # the trickle's own pace, not a wait for the server
        closed_after = time.monotonic() - opened
        still_open = sum(1 for connection in sockets if not _closed(connection))
    finally:
        for connection in sockets:
            connection.close()
        service.stop()
    assert still_open == 0, f"{still_open} of {TRICKLERS} trickling connections still open"
    assert closed_after <= HEADER_TIMEOUT + 1.5
