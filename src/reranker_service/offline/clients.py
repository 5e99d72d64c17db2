"""What a batch or eval run talks to: a running service, or the app in process.

In process, the same app the server runs answers each line through its ASGI interface: the
same validation, limits, error bodies and engine, with no socket and no HTTP client between.
Its per-request telemetry is left out (a run of a million lines would write a million log
lines), and so is its request deadline: a run bounds the work it keeps in flight instead, and a
line waits its turn however long the queue takes on a slow CPU. The engine's own lines and the
models' start-up are logged as the server logs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import httpx

from reranker_service.app import create_app, load_models
from reranker_service.offline.posting import AsgiPoster, HttpPoster, Poster, UnreachableError
from reranker_service.settings import Settings

_FALLBACK_PAIRS_IN_FLIGHT = 4096
"""When the service does not say how many pairs its queue holds."""


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[Poster]:
    """The app, loaded and started here (the models load on entry: minutes for a big one; one
    that cannot be loaded raises ``ModelLoadError`` before anything starts) and stopped on
    exit, its queue drained."""
    settings = settings.model_copy(update={"request_timeout_seconds": 0})
    models = await asyncio.to_thread(load_models, settings)
    app = create_app(settings, models=models, instrument_requests=False)
    async with app.router.lifespan_context(app):
        yield AsgiPoster(app)


@contextlib.asynccontextmanager
async def remote(url: str, *, timeout_seconds: float, connections: int) -> AsyncIterator[Poster]:
    """The service at ``url``, with a connection for each line in flight."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    timeout = httpx.Timeout(timeout_seconds, connect=min(timeout_seconds, 10.0))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        yield HttpPoster(client)


async def queue_capacity(poster: Poster) -> int:
    """The pairs the service's queue holds (``/info``), the most a run keeps in flight; a
    service that does not say (another implementation, an older release) gets a modest
    figure."""
    try:
        reply = await poster.request("GET", "/info")
        info = json.loads(reply.body) if reply.is_success else None
    except (UnreachableError, ValueError):
        info = None
    queued = info.get("max_queued_pairs") if isinstance(info, dict) else None
    return queued if isinstance(queued, int) and queued > 0 else _FALLBACK_PAIRS_IN_FLIGHT
