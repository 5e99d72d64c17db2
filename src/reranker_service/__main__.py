"""``python -m reranker_service``: settings -> logging -> model -> uvicorn (one process)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType

import prometheus_client
import structlog
import uvicorn

from reranker_service import __version__
from reranker_service.api.lifecycle import Lifecycle
from reranker_service.api.routes import PROBE_PATHS, RERANK_PATHS
from reranker_service.app import create_app, load_options
from reranker_service.cli import SettingsError, load_settings
from reranker_service.http_protocol import header_deadline_protocol
from reranker_service.observability.logging import configure_logging
from reranker_service.observability.tracing import (
    TracingConfig,
    TracingConfigError,
    start_tracing,
)

logger = structlog.get_logger("reranker_service")

_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """uvicorn, except that the first stop signal drains before uvicorn stops: ``/ready`` and
    new rerank calls answer 503 while the port stays open, the requests already accepted finish
    (for up to the grace period), and only then does uvicorn close the port and exit, with
    status 0. A second signal stops at once, as uvicorn does."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_seconds: float) -> None:
        super().__init__(config)
        self._lifecycle = lifecycle
        self._grace_seconds = grace_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._draining = True
        self._lifecycle.begin_draining()  # at once: the next /ready already answers 503
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, signal_name: str) -> None:
        logger.info("draining", signal=signal_name, in_flight=self._lifecycle.in_flight)
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        started = time.monotonic()
        try:
            await asyncio.wait_for(self._lifecycle.wait_until_idle(), self._grace_seconds)
        except TimeoutError:
            logger.warning("drain_timed_out", in_flight=self._lifecycle.in_flight)
        # What is left of the grace period is uvicorn's, for requests still running.
        left = self._grace_seconds - (time.monotonic() - started)
        self.config.timeout_graceful_shutdown = max(1, round(left))
        self.should_exit = True

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
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:
        from reranker_service.offline.batch_command import main as batch

        return batch(argv[1:])
    if argv[:1] == ["eval"]:
        from reranker_service.offline.eval_command import main as evaluate

        return evaluate(argv[1:])
    return serve(argv)


def serve(argv: Sequence[str]) -> int:
    """The server: settings -> logging -> models -> uvicorn."""
    try:
        settings = load_settings(argv)
        # The standard OTEL_* variables, read here once; the SDK reads the rest of them as
        # start_tracing builds its parts.
        tracing_config = TracingConfig.from_environ(os.environ)
    except (SettingsError, TracingConfigError) as exc:
        print(f"reranker-service: {exc}", file=sys.stderr)
        return 2
    # Rerank requests write a request_completed line of their own.
    configure_logging(
        settings.log_level,
        settings.log_format,
        quiet_access_paths=PROBE_PATHS | RERANK_PATHS,
        trace_ids=tracing_config is not None,
    )
    # Process-wide: the *_created series only double what Prometheus stores.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

    from reranker_service.engine.loading import load_model
    from reranker_service.engine.scoring import ModelLoadError

    served = {}
    for spec in settings.model_specs:
        try:
            served[spec.name] = load_model(load_options(settings, spec))
        except ModelLoadError as exc:
            logger.error("model_load_failed", model=spec.model, name=spec.name, error=str(exc))
            return 1
    tracing = None
    if tracing_config is not None:
        tracing = start_tracing(tracing_config, service_version=__version__)
        logger.info("tracing_enabled", protocol=tracing_config.protocol)
    app = create_app(settings, models=served, tracing=tracing)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,
        log_config=None,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        server_header=False,
        # Idle and slow clients are bounded: connections at most, idle keep-alive, and a
        # deadline on request headers (uvicorn has none of its own).
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.keep_alive_seconds,
        http=header_deadline_protocol(settings.header_timeout_seconds),
    )
    server = DrainingServer(config, app.state.lifecycle, settings.shutdown_grace_seconds)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
