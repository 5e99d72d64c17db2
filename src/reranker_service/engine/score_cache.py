"""Exact pair scores kept between requests: what a pair's key is, and where scores are kept.

A pair's score depends only on the tokens the model reads and on the model that reads them, so
its key is a SHA-256 over the served model's identity (id, revision, number format, the maximum
pair length) and the pair's token ids, which hold the instruction, the query and the document as
the model reads it (after ``max_tokens_per_doc``, the truncation direction and its window). No
text is kept: only keys and raw scores (the yes - no logit, which raw and probability requests
share). Two stores, either or both: an in-process LRU with a TTL, and Redis, shared by replicas,
fail-open (Redis down or slow scores the request as if nothing were cached) and behind a circuit
breaker (a Redis that keeps failing is not asked for a while: see ``cache_breaker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import structlog
from cachetools import TTLCache

from reranker_service.engine.cache_breaker import (
    BREAKER_POLICY,
    BreakerPolicy,
    Call,
    CircuitBreaker,
)

logger = structlog.get_logger(__name__)

_T = TypeVar("_T")
_TOKEN_ARRAY = "I"
_VALUE = struct.Struct("<d")
"""A score as eight bytes: what comes back is the same double, bit for bit."""
ERROR_LOG_SECONDS = 60.0
"""An unreachable store is logged at most once in this long, with the errors since."""


def cache_identity(model: str, revision: str, dtype: str, max_length: int) -> bytes:
    """The canonical encoding of what, beyond a pair's tokens, decides its score."""
    fields = {"model": model, "revision": revision, "dtype": dtype, "max_length": max_length}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def pair_key(identity: bytes, tokens: Sequence[int]) -> bytes:
    """SHA-256 over the identity's length and bytes, then the token ids as 32-bit integers."""
    digest = hashlib.sha256(len(identity).to_bytes(4, "little"))
    digest.update(identity)
    digest.update(array(_TOKEN_ARRAY, tokens).tobytes())
    return digest.digest()


class ScoreStore(Protocol):
    name: str
    """``memory`` or ``redis``: the ``backend`` label of its metrics, and ``/info``'s."""
    shared: bool
    """Whether other replicas read what it keeps."""

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        """Each key's score, or None; never raises (a failing store misses)."""
        ...

    async def put_many(self, entries: Sequence[tuple[bytes, float]]) -> None:
        """Keep the scores; never raises, and may finish after it returns."""
        ...

    async def close(self) -> None: ...


@dataclass
class CacheEvents:
    """What the stores report, for the metrics: set by whoever watches them."""

    on_error: Callable[[str], None] = lambda backend: None
    on_evictions: Callable[[int], None] = lambda count: None
    on_skipped: Callable[[str], None] = lambda backend: None
    """A lookup or write not sent to ``backend``, its circuit breaker being open."""
    on_breaker_open: Callable[[str, bool], None] = lambda backend, is_open: None
    """``backend``'s circuit breaker opened (True) or closed again (False)."""
    watch_entries: Callable[[Callable[[], int]], None] = lambda read_entries: None
    """How to read the in-process store's entry count, handed over once, when it is built."""


class _CountingTTLCache(TTLCache[bytes, float]):
    """cachetools' TTL cache, telling each entry it evicts for room (not expiry)."""

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        on_eviction: Callable[[], None],
        timer: Callable[[], float],
    ) -> None:
        super().__init__(maxsize, ttl, timer)
        self._on_eviction = on_eviction

    def popitem(self) -> tuple[bytes, float]:
        item = super().popitem()
        self._on_eviction()
        return item


class MemoryStore:
    """The embedded LRU: at most ``size`` entries, each for ``ttl_seconds``. Used from the
    event loop only."""

    name = "memory"
    shared = False

    def __init__(
        self,
        size: int,
        ttl_seconds: float,
        events: CacheEvents,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries = _CountingTTLCache(size, ttl_seconds, lambda: events.on_evictions(1), timer)
        events.watch_entries(lambda: self.entries)

    @property
    def entries(self) -> int:
        self._entries.expire()
        return len(self._entries)

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        return [self._entries.get(key) for key in keys]

    async def put_many(self, entries: Sequence[tuple[bytes, float]]) -> None:
        for key, score in entries:
            self._entries[key] = score

    async def close(self) -> None:
        self._entries.clear()


class RedisStore:
    """Scores shared by replicas in Redis (the ``redis`` client's asyncio API): one MGET per
    lookup, writes pipelined with a TTL, each bounded by ``timeout_seconds``. Any failure counts
    as a miss, is counted, and is logged at most once a minute. Failures in a row open its
    circuit ``breaker``: lookups and writes then skip Redis (misses at once, counted) until a
    probe gets an answer. ``clock`` times the breaker and the log's rate."""

    name = "redis"
    shared = True
    KEY_PREFIX = b"reranker:score:"

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        ttl_seconds: float,
        timeout_seconds: float,
        events: CacheEvents,
        breaker_policy: BreakerPolicy = BREAKER_POLICY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from redis.asyncio import Redis

        options: dict[str, Any] = {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
        }
        if password is not None:
            options["password"] = password
        self._client = Redis.from_url(url, **options)
        self._ttl = max(1, round(ttl_seconds))
        self._timeout = timeout_seconds
        self._events = events
        self._clock = clock
        self.breaker = CircuitBreaker(
            self.name,
            breaker_policy,
            clock=clock,
            on_open_change=lambda is_open: events.on_breaker_open(self.name, is_open),
        )
        self._writes: set[asyncio.Task[None]] = set()
        self._errors_unlogged = 0
        self._logged_at: float | None = None

    @property
    def writes_in_flight(self) -> int:
        """Writes started and not finished: a response never waits for them."""
        return len(self._writes)

    def _failed(self, operation: str, exc: BaseException, call: Call) -> None:
        self._events.on_error(self.name)
        self.breaker.failed(call)
        self._errors_unlogged += 1
        now = self._clock()
        if self._logged_at is None or now - self._logged_at >= ERROR_LOG_SECONDS:
            logger.warning(
                "cache_unavailable",
                backend=self.name,
                operation=operation,
                errors=self._errors_unlogged,
                error=str(exc) or type(exc).__name__,
                detail="requests are scored as if nothing were cached",
            )
            self._logged_at, self._errors_unlogged = now, 0

    def _allowed(self) -> Call | None:
        """The call the breaker lets through, if it does; a refused one is counted as skipped."""
        call = self.breaker.allow()
        if call is None:
            self._events.on_skipped(self.name)
        return call

    async def _send(
        self, operation: str, command: Callable[[], Awaitable[_T]], call: Call
    ) -> _T | None:
        """``command``'s answer, or None when it failed or timed out; the breaker hears which."""
        try:
            async with asyncio.timeout(self._timeout):
                answer = await command()
        except asyncio.CancelledError:
            self.breaker.abandoned(call)
            raise
        except Exception as exc:
            self._failed(operation, exc, call)
            return None
        self.breaker.succeeded(call)
        return answer

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        if not keys:
            return []
        call = self._allowed()
        if call is None:
            return [None] * len(keys)
        prefixed = [self.KEY_PREFIX + key for key in keys]
        values = await self._send("get", lambda: self._client.mget(prefixed), call)
        if values is None:
            return [None] * len(keys)
        return [
            _VALUE.unpack(value)[0] if isinstance(value, bytes) and len(value) == 8 else None
            for value in values
        ]

    async def put_many(self, entries: Sequence[tuple[bytes, float]]) -> None:
        """Written in the background: a response never waits for Redis to store."""
        if not entries:
            return
        call = self._allowed()
        if call is None:
            return
        task = asyncio.create_task(self._write(list(entries), call))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, entries: list[tuple[bytes, float]], call: Call) -> None:
        async def write() -> list[Any]:
            # Built inside the call: whatever fails here, the breaker hears of it.
            pipeline = self._client.pipeline(transaction=False)
            for key, score in entries:
                pipeline.set(self.KEY_PREFIX + key, _VALUE.pack(score), ex=self._ttl)
            return await pipeline.execute()

        await self._send("put", write, call)

    async def flush_writes(self) -> None:
        """Wait for the writes started so far (tests, shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def close(self) -> None:
        await self.flush_writes()
        await self._client.aclose()


class ScoreCache:
    """The stores in order, nearest first: a lookup asks each for what the ones before it
    missed, and fills the nearer stores with what a farther one had; scores computed are kept
    in all."""

    def __init__(
        self, identity: bytes, stores: Sequence[ScoreStore], *, owns_stores: bool = True
    ) -> None:
        if not stores:
            raise ValueError("a score cache needs a store")
        self._identity = identity
        self.stores = tuple(stores)
        self._owns_stores = owns_stores

    def for_model(self, identity: bytes) -> ScoreCache:
        """The cache of another served model: the same stores, its own keys. It leaves
        closing the stores to this one."""
        return ScoreCache(identity, self.stores, owns_stores=False)

    @property
    def backend(self) -> str:
        """``memory``, ``redis``, or ``memory+redis``."""
        return "+".join(store.name for store in self.stores)

    @property
    def shared(self) -> bool:
        """Whether replicas share scores through one of its stores."""
        return any(store.shared for store in self.stores)

    def keys(self, pairs: Sequence[Sequence[int]]) -> list[bytes]:
        return [pair_key(self._identity, tokens) for tokens in pairs]

    async def get_many(self, keys: Sequence[bytes]) -> list[float | None]:
        found: list[float | None] = [None] * len(keys)
        missing = list(range(len(keys)))
        for depth, store in enumerate(self.stores):
            if not missing:
                break
            scores = await store.get_many([keys[index] for index in missing])
            fill = [(keys[i], s) for i, s in zip(missing, scores, strict=True) if s is not None]
            for index, score in zip(missing, scores, strict=True):
                found[index] = score
            for nearer in self.stores[:depth]:
                await nearer.put_many(fill)
            missing = [index for index in missing if found[index] is None]
        return found

    async def put_many(self, entries: Sequence[tuple[bytes, float]]) -> None:
        for store in self.stores:
            await store.put_many(entries)

    async def close(self) -> None:
        """Close the stores, if this cache owns them."""
        if not self._owns_stores:
            return
        for store in self.stores:
            await store.close()
