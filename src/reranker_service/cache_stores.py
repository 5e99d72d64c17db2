"""The score cache's stores, built from the settings: one row per kind, nearest first.

A new kind of store is its class (beside ``engine.score_cache.RedisStore``), its settings, and a
row here. Its name is the ``backend`` label of the cache metrics (the app creates their series
from these rows) and is what ``/info`` reports, read from the cache itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from reranker_service.engine.cache_breaker import BreakerPolicy
from reranker_service.engine.score_cache import (
    CacheEvents,
    MemoryStore,
    RedisStore,
    ScoreCache,
    ScoreStore,
    cache_identity,
)
from reranker_service.engine.scoring import ModelDescription
from reranker_service.settings import Settings


@dataclass(frozen=True)
class StoreContext:
    """What every store is built with besides the settings."""

    events: CacheEvents
    clock: Callable[[], float]
    """Its TTLs and its circuit breaker's back-off are timed by it."""
    breaker_policy: BreakerPolicy
    """For stores across the network."""


@dataclass(frozen=True)
class StoreKind:
    name: str
    """The ``name`` of the stores it builds."""
    build: Callable[[Settings, StoreContext], ScoreStore | None]
    """Its store, or None where the settings leave it off."""


def _memory_store(settings: Settings, context: StoreContext) -> ScoreStore | None:
    if not settings.cache_size:
        return None
    return MemoryStore(
        settings.cache_size, settings.cache_ttl_seconds, context.events, context.clock
    )


def _redis_store(settings: Settings, context: StoreContext) -> ScoreStore | None:
    if settings.cache_url is None:
        return None
    password = settings.cache_password
    return RedisStore(
        settings.cache_url,
        password=password.get_secret_value() if password is not None else None,
        ttl_seconds=settings.cache_ttl_seconds,
        timeout_seconds=settings.cache_timeout_ms / 1000,
        events=context.events,
        breaker_policy=context.breaker_policy,
        clock=context.clock,
    )


STORE_KINDS: Final = (
    StoreKind("memory", _memory_store),
    StoreKind("redis", _redis_store),
)
"""Nearest first: a lookup asks them in this order."""
STORE_NAMES: Final = tuple(kind.name for kind in STORE_KINDS)


def build_score_cache(
    settings: Settings, model: ModelDescription, context: StoreContext
) -> ScoreCache | None:
    """The stores the settings ask for, keyed to the served ``model``; None when all are off."""
    built = (kind.build(settings, context) for kind in STORE_KINDS)
    stores = [store for store in built if store is not None]
    if not stores:
        return None
    return ScoreCache(model_identity(model), stores)


def model_identity(model: ModelDescription) -> bytes:
    """What, beyond a pair's tokens, decides its score under ``model``: its cache keys'
    namespace, one per served model."""
    return cache_identity(model.model, model.revision, model.dtype, model.max_length)
