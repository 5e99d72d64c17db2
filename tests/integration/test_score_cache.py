"""The pair-score cache: exact answers, keys that miss when anything deciding a score changes,
bounded memory, and Redis shared by replicas and failing open. Redis is a real redis-server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from reranker_service.app import create_app
from reranker_service.cache_stores import STORE_KINDS, StoreContext, build_score_cache
from reranker_service.engine.cache_breaker import BREAKER_POLICY, FAILURES_TO_OPEN, BreakerState
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.score_cache import (
    CacheEvents,
    MemoryStore,
    RedisStore,
    cache_identity,
    pair_key,
)
from reranker_service.engine.scoring import ModelDescription, probability
from reranker_service.settings import Settings
from tests.support.exposition import Exposition, scrape
from tests.support.redis_server import redis_server, redis_store_of
from tests.support.service_process import start_service
from tests.support.serving import (
    SMALL_MAX_LENGTH,
    AppFactory,
    FakeClock,
    PassRecorder,
    asgi_client,
    make_settings,
)

QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "The Seine flows through Paris.",
]
CACHE_SIZE = 100_000
"""The default; the tests' settings turn the cache off unless asked."""
LONG = " ".join(f"word{index} of a long document about France" for index in range(200))


def _raw(response: httpx.Response) -> list[float]:
    assert response.status_code == 200, response.text
    return [r["relevance_score"] for r in sorted(response.json()["results"], key=_index)]


def _index(result: dict[str, Any]) -> int:
    return int(result["index"])


async def test_a_cached_answer_is_the_computed_one_bit_for_bit(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    recorder = PassRecorder(scoring_model)
    body = {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
    async with asgi_client(app_factory(recorder, cache_size=CACHE_SIZE)) as http:
        first = await http.post("/rerank", json=body)
        passes = len(recorder.passes)
        second = await http.post("/rerank", json=body)
        probabilities = await http.post("/rerank", json={**body, "raw_scores": False})
        exposition = Exposition((await http.get("/metrics")).text)
    assert first.headers["x-reranker-cache"] == "miss"
    assert second.headers["x-reranker-cache"] == "hit"
    assert probabilities.headers["x-reranker-cache"] == "hit"  # raw and P(yes) share entries
    assert len(recorder.passes) == passes, "a request whose pairs all hit ran a forward pass"
    assert _raw(second) == _raw(first)
    assert second.json()["usage"] == first.json()["usage"]  # billing counts every pair
    assert _raw(probabilities) == [probability(raw) for raw in _raw(first)]
    assert exposition.value("reranker_cache_lookups_total", result="hit") == 6
    assert exposition.value("reranker_cache_lookups_total", result="miss") == 3
    assert exposition.value("reranker_cache_entries") == 3
    assert exposition.histogram("reranker_cache_lookup_seconds").count == 3


async def test_a_partly_cached_request_queues_only_its_misses(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    recorder = PassRecorder(scoring_model)
    async with asgi_client(app_factory(recorder, cache_size=CACHE_SIZE)) as http:
        whole = _raw(
            await http.post(
                "/rerank", json={"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
            )
        )
        recorder.passes.clear()
        mixed = await http.post(
            "/rerank",
            json={"query": QUERY, "documents": [DOCUMENTS[1], "A new document."],
                  "raw_scores": True},
        )  # fmt: skip
    assert mixed.headers["x-reranker-cache"] == "partial"
    assert sum(len(batch) for batch in recorder.passes) == 1
    assert _raw(mixed)[0] == whole[1]


async def test_no_cache_skips_the_lookup_and_still_stores(
    app_factory: AppFactory, scoring_model: ServedModel
) -> None:
    recorder = PassRecorder(scoring_model)
    body = {"query": QUERY, "documents": DOCUMENTS}
    async with asgi_client(app_factory(recorder, cache_size=CACHE_SIZE)) as http:
        await http.post("/rerank", json=body)
        before = len(recorder.passes)
        fresh = await http.post("/rerank", json=body, headers={"Cache-Control": "no-cache"})
        assert len(recorder.passes) > before
        assert fresh.headers["x-reranker-cache"] == "miss"
        new = {"query": QUERY, "documents": ["Only in the no-cache request."]}
        await http.post("/rerank", json=new, headers={"Cache-Control": "no-cache"})
        again = await http.post("/rerank", json=new)
    assert again.headers["x-reranker-cache"] == "hit"


@pytest.mark.parametrize(
    ("route", "change"),
    [
        ("/rerank", {"instruction": "Given a question, find passages in French"}),
        ("/rerank", {"query": "Which river flows through Paris?"}),
        ("/rerank", {"documents": ["Changed: " + LONG]}),
        ("/rerank", {"max_tokens_per_doc": 40}),
        ("/rerank", {"max_chunks_per_doc": 3}),
        ("tei", {"truncation_direction": "Left"}),
    ],
)
async def test_changing_what_decides_a_score_misses(
    app_factory: AppFactory, short_scoring_model: ServedModel, route: str, change: dict[str, Any]
) -> None:
    """Each ingredient of the key on its own: the base request hits once cached, and the one
    with the change does not. The document is longer than the short model's pairs, so cuts,
    windows and the direction of truncation change what the model reads. (A chunked document's
    first window is the truncated pair itself: that request is a partial hit.)"""
    documents_field = "texts" if route == "tei" else "documents"
    base: dict[str, Any] = {"query": QUERY, documents_field: [LONG]}
    if "documents" in change:
        change = {documents_field: change["documents"]}
    app = app_factory(short_scoring_model, max_length=SMALL_MAX_LENGTH, cache_size=CACHE_SIZE)
    async with asgi_client(app) as http:
        first = await http.post("/rerank", json=base)
        again = await http.post("/rerank", json=base)
        changed = await http.post("/rerank", json={**base, **change})
    assert (first.status_code, again.status_code, changed.status_code) == (200, 200, 200)
    assert again.headers["x-reranker-cache"] == "hit"
    assert changed.headers["x-reranker-cache"] != "hit", change
    if "max_chunks_per_doc" in change:
        assert changed.headers["x-reranker-cache"] == "partial"


def test_the_served_model_and_max_length_are_in_the_key() -> None:
    tokens = [1, 2, 3, 4]
    base = ("model", "rev", "bfloat16", 8192)
    keys = {pair_key(cache_identity(*base), tokens)}
    for index, other in enumerate(("other-model", "other-rev", "float32", 4096)):
        changed = list(base)
        changed[index] = other
        keys.add(pair_key(cache_identity(*changed), tokens))  # type: ignore[arg-type]
    keys.add(pair_key(cache_identity(*base), [1, 2, 3, 5]))
    assert len(keys) == 6


async def test_the_memory_store_keeps_its_size_and_ttl() -> None:
    clock = [0.0]
    evictions: list[int] = []
    store = MemoryStore(3, 10.0, CacheEvents(on_evictions=evictions.append), lambda: clock[0])
    await store.put_many([(bytes([n]), float(n)) for n in range(5)])
    assert store.entries == 3
    assert len(evictions) == 2
    assert await store.get_many([bytes([0]), bytes([4])]) == [None, 4.0]
    clock[0] = 10.5
    assert await store.get_many([bytes([4])]) == [None]
    assert store.entries == 0
    assert len(evictions) == 2, "expiry is not eviction"


@pytest.mark.slow
async def test_a_hostile_request_stream_cannot_grow_the_cache_past_its_bound(
    app_factory: AppFactory,
) -> None:
    """100 requests of 1 000 distinct documents each, against a cache of 500 entries."""
    async with asgi_client(app_factory(cache_size=500, max_documents=1000)) as http:
        for request in range(100):
            documents = [f"{request}-{index}" for index in range(1000)]
            response = await http.post("/rerank", json={"query": "q", "documents": documents})
            assert response.status_code == 200
        exposition = Exposition((await http.get("/metrics")).text)
    assert exposition.value("reranker_cache_entries") == 500
    assert exposition.value("reranker_cache_evictions_total") == 100 * 1000 - 500


async def test_redis_shares_scores_and_a_lost_redis_costs_nothing_but_the_cache(
    app_factory: AppFactory, scoring_model: ServedModel, tmp_path: Path
) -> None:
    """In process, Redis only (no memory store): a second app on the same Redis answers from
    it; then Redis is killed mid-traffic and every request is still answered, exactly, and each
    of its lookups and writes either failed (counted) or was skipped by the open breaker."""
    with redis_server(tmp_path) as redis:
        settings = {"cache_size": 0, "cache_url": redis.url, "cache_timeout_ms": 200}
        body = {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
        async with asgi_client(app_factory(**settings)) as http:
            computed = _raw(await http.post("/rerank", json=body))
        recorder = PassRecorder(scoring_model)
        app = app_factory(recorder, **settings)
        async with asgi_client(app) as http:
            started_up = len(recorder.passes)  # the start-up's measurement and warm-up
            shared = await http.post("/rerank", json=body)
            assert shared.headers["x-reranker-cache"] == "hit"
            assert len(recorder.passes) == started_up
            assert _raw(shared) == computed
            redis.kill()
            for index in range(5):
                body_now = {**body, "documents": [*DOCUMENTS, f"new {index}"]}
                response = await http.post("/rerank", json=body_now)
                # Computed again, beside another pair: the model card's, within fp32's 1e-5.
                assert _raw(response)[:3] == pytest.approx(computed, abs=1e-5)
                assert response.headers["x-reranker-cache"] == "miss"
            await redis_store_of(app).flush_writes()
            exposition = Exposition((await http.get("/metrics")).text)
    errors = exposition.value("reranker_cache_errors_total", backend="redis")
    skipped = exposition.value("reranker_cache_skipped_total", backend="redis")
    assert errors >= FAILURES_TO_OPEN
    assert errors + skipped == 5 * 2  # a lookup and a write per request


async def _rerank_one(http: httpx.AsyncClient, document: str) -> None:
    response = await http.post("/rerank", json={"query": QUERY, "documents": [document]})
    assert response.status_code == 200, response.text
    assert response.headers["x-reranker-cache"] == "miss"


async def test_a_stuck_redis_delays_a_request_by_no_more_than_the_timeout(
    checkpoint: Path, scoring_model: ServedModel, tmp_path: Path
) -> None:
    """Redis paused (SIGSTOP), read from what the service reports: its lookup histogram shows
    the lookups sent to Redis waited out the timeout and not twice it; an answer came while its
    write was still waiting on Redis (it goes on in the background); and once the breaker had
    opened, lookups did not wait at all. The breaker's clock stands still: no probe mid-test."""
    timeout = 0.25
    with redis_server(tmp_path) as redis:
        settings = make_settings(
            checkpoint, cache_size=0, cache_url=redis.url, cache_timeout_ms=timeout * 1000
        )
        app = create_app(settings, model=scoring_model, cache_clock=FakeClock())
        async with asgi_client(app) as http:
            store = redis_store_of(app)
            await _rerank_one(http, "healthy")
            await store.flush_writes()
            healthy = await scrape(http)
            redis.pause()
            try:
                writes_in_flight_at_answer = []
                for index in range(2 * FAILURES_TO_OPEN):
                    await _rerank_one(http, f"stuck {index}")
                    writes_in_flight_at_answer.append(store.writes_in_flight)
                    if store.breaker.state is BreakerState.OPEN:
                        break
                await store.flush_writes()
                stuck = await scrape(http)
                for index in range(3):
                    await _rerank_one(http, f"skipped {index}")
                skipping = await scrape(http)
            finally:
                redis.resume()
    assert store.breaker.state is BreakerState.OPEN
    assert writes_in_flight_at_answer[0] == 1
    lookup = "reranker_cache_lookup_seconds"
    under_timeout = 0.1  # the bucket below the timeout's
    sent = _difference(stuck.histogram(lookup).buckets, healthy.histogram(lookup).buckets)
    waited = sent[float("inf")] - sent[under_timeout]
    assert waited >= 1, f"no lookup waited for the paused Redis: {sent}"
    assert sent[2 * timeout] == sent[float("inf")], (
        f"a lookup waited past twice its timeout: {sent}"
    )
    skipped = _difference(skipping.histogram(lookup).buckets, stuck.histogram(lookup).buckets)
    assert skipped[float("inf")] == 3
    assert skipped[under_timeout] == 3, f"a lookup waited with the breaker open: {skipped}"
    errors = "reranker_cache_errors_total"
    assert skipping.value(errors, backend="redis") == stuck.value(errors, backend="redis")


def _difference(after: dict[float, float], before: dict[float, float]) -> dict[float, float]:
    """Cumulative bucket counts between two scrapes."""
    return {bound: count - before[bound] for bound, count in after.items()}


async def test_the_redis_password_comes_from_its_file(tmp_path: Path) -> None:
    with redis_server(tmp_path, password="s3cret") as redis:
        store = RedisStore(
            redis.url, password="s3cret", ttl_seconds=60, timeout_seconds=1, events=CacheEvents()
        )
        await store.put_many([(b"k", 1.5)])
        await store.flush_writes()
        assert await store.get_many([b"k", b"other"]) == [1.5, None]
        await store.close()
        errors: list[str] = []
        wrong = RedisStore(
            redis.url,
            password="wrong",
            ttl_seconds=60,
            timeout_seconds=1,
            events=CacheEvents(on_error=errors.append),
        )
        assert await wrong.get_many([b"k"]) == [None]
        assert errors == ["redis"]
        await wrong.close()


@pytest.mark.slow
def test_two_replicas_share_one_redis(checkpoint: Path, tmp_path: Path) -> None:
    """Two service processes on one Redis: the second answers the first one's request with
    no forward pass of its own (its pass counter does not move)."""
    with redis_server(tmp_path) as redis:
        services = [
            start_service(checkpoint, "--cache-url", redis.url, "--cache-timeout-ms", "500")
            for _ in range(2)
        ]
        try:
            body = {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
            with httpx.Client(base_url=services[0].base_url(), timeout=30) as first:
                computed = _raw(first.post("/rerank", json=body))
            _wait_for_keys(redis.port, len(DOCUMENTS))  # written after the answer
            with httpx.Client(base_url=services[1].base_url(), timeout=30) as second:
                before = Exposition(second.get("/metrics").text)
                shared = second.post("/rerank", json=body)
                after = Exposition(second.get("/metrics").text)
        finally:
            for service in services:
                service.stop()
    assert shared.headers["x-reranker-cache"] == "hit"
    assert _raw(shared) == computed
    passes = "reranker_batch_size"
    assert after.histogram(passes).count == before.histogram(passes).count


def _wait_for_keys(port: int, count: int) -> None:
    """Until Redis holds ``count`` keys (bounded): the first replica stores its scores in the
    background, after it has answered."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=port)
    try:
        for _ in range(200):
            if client.dbsize() >= count:
                return
            time.sleep(0.01)  # an outside process's write: nothing to wait on but its effect
    finally:
        client.close()
    raise AssertionError(f"Redis never held {count} keys")


async def test_info_shows_the_cache(app_factory: AppFactory) -> None:
    assert Settings.model_fields["cache_size"].default == CACHE_SIZE  # on unless turned off
    async with asgi_client(app_factory(cache_size=CACHE_SIZE)) as http:
        default = (await http.get("/info")).json()["cache"]
    async with asgi_client(app_factory(cache_size=0)) as http:
        off = (await http.get("/info")).json()["cache"]
        answer = await http.post("/rerank", json={"query": "q", "documents": ["a"]})
    async with asgi_client(app_factory(cache_size=10, cache_url=_NOBODY)) as http:
        both = (await http.get("/info")).json()["cache"]
    assert default == {"backend": "memory", "size": 100_000, "ttl_seconds": 3600.0, "redis": False}
    assert off["backend"] == "off"
    assert answer.headers["x-reranker-cache"] == "miss"
    assert both == {"backend": "memory+redis", "size": 10, "ttl_seconds": 3600.0, "redis": True}


_NOBODY = "redis://127.0.0.1:9/0"
"""A Redis URL for a cache that is built and never used (the discard port)."""


async def test_every_kind_of_store_is_built_under_its_own_name(checkpoint: Path) -> None:
    """With every store's setting on, the cache holds one store per row, named as its row (the
    metrics' ``backend`` series are made from the rows), in the rows' order."""
    settings = make_settings(checkpoint, cache_size=10, cache_url=_NOBODY)
    context = StoreContext(CacheEvents(), time.monotonic, BREAKER_POLICY)
    model = ModelDescription("model", "rev", "cpu", "float32", 512, 0.0)
    cache = build_score_cache(settings, model, context)
    assert cache is not None
    try:
        assert [store.name for store in cache.stores] == [kind.name for kind in STORE_KINDS]
    finally:
        await cache.close()
