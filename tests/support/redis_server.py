"""A real Redis server (Debian's ``redis-server``) on a free 127.0.0.1 port, for the score
cache's tests: started, paused (SIGSTOP, as a stuck server), resumed, killed and started again
on the same port like one."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from reranker_service.engine.score_cache import RedisStore
from tests.support.prometheus_server import free_port


class RedisServer:
    def __init__(self, command: list[str], port: int, password: str | None) -> None:
        self._command = command
        self._password = password
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        """The server, once it answers (bounded)."""
        process = subprocess.Popen(
            self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not self._answers():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait(timeout=10)
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)  # a process we start, not a condition of the code under test
        return process

    def _answers(self) -> bool:
        """PING gets PONG; with a password, PING is refused before AUTH: listening will do."""
        return _listening(self.port) if self._password is not None else _accepts(self.port)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        """After ``kill``: a new, empty server on the same port."""
        self.process = self._start()


def _accepts(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        try:
            probe.connect(("127.0.0.1", port))
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def redis_server(directory: Path, password: str | None = None) -> Iterator[RedisServer]:
    """``redis-server`` with no persistence, on 127.0.0.1 only; stopped when the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (the README's test command installs it)")
    port = free_port()
    command = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
    ]  # fmt: skip
    if password is not None:
        command += ["--requirepass", password]
    server = RedisServer(command, port, password)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.resume()
            server.process.kill()
            server.process.wait(timeout=10)


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def redis_store_of(app: FastAPI) -> RedisStore:
    """The Redis store of an app whose score cache is Redis alone."""
    [store] = app.state.score_cache.stores
    assert isinstance(store, RedisStore)
    return store
