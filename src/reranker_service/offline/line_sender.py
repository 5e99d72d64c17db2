"""Send a batch line to its route, retrying what a busy or restarting service answers."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import structlog

from reranker_service.offline.batch_lines import Answer, BatchLine, error_object
from reranker_service.offline.in_order import Window
from reranker_service.offline.posting import Poster, Reply, UnreachableError

logger = structlog.get_logger(__name__)

RETRIED_STATUSES: Final = frozenset({429, 503, 504})
"""Overloaded, not ready or draining (the service says when to come back, ``Retry-After``),
and timed out in the service's queue (its pairs were dropped unscored: sent again once fewer
lines are in flight)."""
TIMED_OUT: Final = 504


@dataclass(frozen=True)
class RetryPolicy:
    """How long a line keeps trying before it is written as failed."""

    max_retries: int = 8
    """Tries after the first, for a 429, 503 or 504 answer or an unreachable service."""
    first_backoff_seconds: float = 0.5
    """The wait after a failure that names none (doubling, with jitter, up to the most)."""
    max_wait_seconds: float = 60.0
    """The longest wait, whatever ``Retry-After`` asks."""

    def backoff(self, retry: int) -> float:
        """The wait before ``retry`` (1 for the first), when the service named none."""
        ceiling = min(self.max_wait_seconds, self.first_backoff_seconds * 2 ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(header: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delay-seconds or an HTTP date (RFC 9110)."""
    if header is None:
        return None
    text = header.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _parsed_body(reply: Reply) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError:
        return reply.body[:1000].decode("utf-8", "replace") or None


Sleep = Callable[[float], Awaitable[None]]


class LineSender:
    """POSTs lines through one poster: the service over the network, or the app in process.
    A 429 or 503 is tried again after its ``Retry-After``, a 504 after fewer lines are in
    flight (``window``), and a service that cannot be reached after a backoff; any other answer
    is final."""

    def __init__(
        self,
        poster: Poster,
        retry: RetryPolicy,
        *,
        headers: Mapping[str, str] | None = None,
        window: Window | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._poster = poster
        self._retry = retry
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._window = window
        """Narrowed by a 504, widened by an answer."""
        self._sleep = sleep
        self.retries = 0
        """Tries made after a first one, over every line: how hard the service pushed back."""

    async def send(self, line: BatchLine) -> Answer:
        if line.refused is not None:
            return Answer(line, None, None, error=line.refused.as_json())
        for retry in range(self._retry.max_retries + 1):
            if retry:
                self.retries += 1
            try:
                reply = await self._poster.request("POST", line.route, line.body, self._headers)
            except UnreachableError as exc:
                failure = _unreachable(line, exc)
                wait = self._retry.backoff(retry + 1)
            else:
                answer = _answer(line, reply)
                if self._window is not None:
                    if reply.status_code == TIMED_OUT:
                        self._window.narrow()
                        logger.warning(
                            "batch_window_narrowed",
                            line=line.number,
                            lines_in_flight=self._window.size,
                            reason="a line timed out in the service's queue",
                        )
                    elif reply.is_success:
                        self._window.widen()
                if reply.status_code not in RETRIED_STATUSES:
                    return answer
                failure = answer
                asked = retry_after_seconds(reply.headers.get("retry-after"))
                wait = self._retry.backoff(retry + 1) if asked is None else asked
            if retry == self._retry.max_retries:
                return failure
            await self._sleep(min(wait, self._retry.max_wait_seconds))
        raise AssertionError("unreachable: the last try returns")


def _answer(line: BatchLine, reply: Reply) -> Answer:
    body = _parsed_body(reply)
    request_id = reply.headers.get("x-request-id")
    if reply.is_success:
        return Answer(line, reply.status_code, body, request_id)
    return Answer(line, reply.status_code, body, request_id, error_object(body, reply.status_code))


def _unreachable(line: BatchLine, exc: UnreachableError) -> Answer:
    kind = "timeout" if exc.timed_out else "connection_error"
    return Answer(line, None, None, error={"type": kind, "message": str(exc)})
