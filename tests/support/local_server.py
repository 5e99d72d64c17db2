"""Serve an app under real uvicorn on a thread, on 127.0.0.1: for tests and benchmarks (not the
service, whose entry point runs uvicorn itself)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


@contextlib.contextmanager
def serve_in_thread(app: ASGIApp, *, timeout_keep_alive: int = 5) -> Iterator[str]:
    """Yield the base URL of ``app`` served by uvicorn on an ephemeral 127.0.0.1 port; idle
    kept-alive connections are closed after ``timeout_keep_alive`` seconds.

    The socket listens before the server thread starts, so clients may connect at once: the
    kernel queues them until uvicorn has finished its lifespan startup and accepts.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_config=None, lifespan="on", timeout_keep_alive=timeout_keep_alive)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("uvicorn server thread did not stop")
