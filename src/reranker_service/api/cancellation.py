"""Stop working for a client that has gone: a route decorator, as vLLM's ``with_cancellation``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from fastapi import Request
from starlette.types import Receive

from reranker_service.api.errors import ApiError

P = ParamSpec("P")
R = TypeVar("R")


async def _until_disconnected(receive: Receive) -> None:
    """Return once the client has gone. Once the body was read, ``receive`` has nothing left to
    give but ``http.disconnect``."""
    while (await receive())["type"] != "http.disconnect":
        pass


def with_cancellation(endpoint: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Run ``endpoint`` while watching its client: if the client disconnects first, the endpoint
    is cancelled (and has finished unwinding, so its queued work is withdrawn) before a 499
    ``client_disconnected`` error is raised.

    The endpoint must take the ``Request`` as a parameter and read its body through FastAPI (a
    body model), so that the body is consumed before the watch starts.
    """

    @functools.wraps(endpoint)
    async def cancellable(*args: P.args, **kwargs: P.kwargs) -> R:
        request = next(value for value in kwargs.values() if isinstance(value, Request))
        work = asyncio.ensure_future(endpoint(*args, **kwargs))
        client_gone = asyncio.ensure_future(_until_disconnected(request.receive))
        try:
            await asyncio.wait({work, client_gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            client_gone.cancel()
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
        if work.cancelled():  # only ever by the finally above: the client left first
            raise ApiError("client_disconnected", "the client closed the connection")
        return work.result()

    return cancellable
