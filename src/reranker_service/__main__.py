"""``python -m reranker_service``: settings -> logging -> model -> uvicorn (one process)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import prometheus_client
import structlog
import uvicorn

from reranker_service.app import create_app, load_options
from reranker_service.cli import SettingsError, load_settings
from reranker_service.observability.logging import configure_logging

logger = structlog.get_logger("reranker_service")

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """uvicorn, except that a stop signal first marks the service as draining (``/ready`` 503,
    new rerank calls 503) and the process exits 0 after a clean drain instead of re-raising
    the signal."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            self._on_drain()
            if self._loop is not None:
                name = signal.Signals(sig).name
                self._loop.call_soon_threadsafe(lambda: logger.info("draining", signal=name))
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"reranker-service: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    # Process-wide: the *_created series only double what Prometheus stores.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

    from reranker_service.engine.model import ModelLoadError, load_scoring_model

    try:
        model = load_scoring_model(load_options(settings))
    except ModelLoadError as exc:
        logger.error("model_load_failed", model=settings.model, error=str(exc))
        return 1
    app = create_app(settings, model=model)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        server_header=False,
    )
    server = DrainingServer(config, on_drain=app.state.service.begin_draining)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
