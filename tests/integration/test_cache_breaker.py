"""The score cache's circuit breaker: its state machine on a fake clock, then a real Redis
killed and started again, and one paused (SIGSTOP) and resumed, read through what the service
and the store themselves report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs

from reranker_service.app import create_app
from reranker_service.cache_stores import STORE_NAMES
from reranker_service.engine.cache_breaker import (
    FAILURES_TO_OPEN,
    FIRST_BACKOFF_SECONDS,
    LOG_SECONDS,
    MAX_BACKOFF_SECONDS,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
)
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.score_cache import CacheEvents, RedisStore
from tests.support.exposition import scrape
from tests.support.redis_server import redis_server, redis_store_of
from tests.support.serving import AppFactory, FakeClock, asgi_client, make_settings

QUERY = "What is the capital of France?"


def _state(breaker: CircuitBreaker) -> BreakerState:
    """Read afresh: mypy would carry an earlier assertion's narrowing across calls."""
    return breaker.state


def _opened(
    clock: FakeClock, on_open_change: Callable[[bool], None] = lambda is_open: None
) -> CircuitBreaker:
    breaker = CircuitBreaker("redis", clock=clock, on_open_change=on_open_change)
    for _ in range(FAILURES_TO_OPEN):
        assert breaker.allow()
        breaker.failed()
    assert _state(breaker) is BreakerState.OPEN
    return breaker


# -- the state machine --------------------------------------------------------------------------


def test_failures_in_a_row_open_it_and_an_answer_between_starts_the_count_over() -> None:
    breaker = CircuitBreaker("redis", clock=FakeClock())
    for _ in range(FAILURES_TO_OPEN - 1):
        assert breaker.allow()
        breaker.failed()
    breaker.succeeded()
    for _ in range(FAILURES_TO_OPEN - 1):
        assert breaker.allow()
        breaker.failed()
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.failed()
    assert _state(breaker) is BreakerState.OPEN
    assert not breaker.allow()


def test_open_it_refuses_until_the_back_off_ends_then_lets_one_probe_through() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    opened_at = clock.now
    clock.now = opened_at + FIRST_BACKOFF_SECONDS - 0.01
    assert not breaker.allow()
    clock.now = opened_at + FIRST_BACKOFF_SECONDS
    assert breaker.allow()
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow(), "a second call went out while the probe was on its way"


def test_each_failed_probe_doubles_the_back_off_up_to_its_cap_and_an_answer_resets_it() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    expected = [min(FIRST_BACKOFF_SECONDS * 2**n, MAX_BACKOFF_SECONDS) for n in range(8)]
    assert expected[-1] == MAX_BACKOFF_SECONDS > expected[-4]
    for backoff in expected:
        since = clock.now
        clock.now = since + backoff - 0.01
        assert not breaker.allow(), backoff
        clock.now = since + backoff
        assert breaker.allow(), backoff
        breaker.failed()
    clock.advance(MAX_BACKOFF_SECONDS)
    assert breaker.allow()
    breaker.succeeded()
    assert _state(breaker) is BreakerState.CLOSED
    for _ in range(FAILURES_TO_OPEN):
        breaker.failed()
    since = clock.now
    clock.now = since + FIRST_BACKOFF_SECONDS
    assert breaker.allow(), "the back-off did not start over after the breaker closed"


def test_a_probe_abandoned_on_its_way_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    clock.advance(FIRST_BACKOFF_SECONDS)
    assert breaker.allow()
    breaker.abandoned()  # its request was cancelled: neither answer nor failure
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.allow()
    breaker.succeeded()
    assert _state(breaker) is BreakerState.CLOSED


def test_while_half_open_only_the_probe_decides() -> None:
    """A call made before the breaker opened may end while the probe is out (a timeout as
    long as the back-off): its failure neither reopens the breaker nor hides the probe's
    answer."""
    clock = FakeClock()
    breaker = CircuitBreaker("redis", clock=clock)
    calls = [breaker.allow() for _ in range(FAILURES_TO_OPEN + 1)]
    for call in calls[:FAILURES_TO_OPEN]:
        breaker.failed(call)
    assert _state(breaker) is BreakerState.OPEN
    clock.advance(FIRST_BACKOFF_SECONDS)
    probe = breaker.allow()
    assert probe is not None
    assert probe.probe
    breaker.failed(calls[-1])  # the straggler
    assert _state(breaker) is BreakerState.HALF_OPEN
    breaker.succeeded(probe)
    assert _state(breaker) is BreakerState.CLOSED


def test_answers_to_calls_made_before_it_opened_change_nothing() -> None:
    clock = FakeClock()
    breaker = _opened(clock)
    breaker.succeeded()
    breaker.failed()
    assert _state(breaker) is BreakerState.OPEN
    clock.advance(FIRST_BACKOFF_SECONDS)
    assert breaker.allow(), "a straggler's failure pushed the probe back"


def test_it_reports_opening_and_closing_and_logs_them_at_most_once_a_minute() -> None:
    clock = FakeClock()
    changes: list[bool] = []
    with capture_logs() as logs:
        breaker = _opened(clock, on_open_change=changes.append)
        assert not breaker.allow()
        assert not breaker.allow()
        clock.advance(FIRST_BACKOFF_SECONDS)
        assert breaker.allow()
        breaker.failed()  # still open: neither reported nor logged
        clock.advance(2 * FIRST_BACKOFF_SECONDS)
        assert breaker.allow()
        breaker.succeeded()
        for _ in range(FAILURES_TO_OPEN):  # at once: open again, not logged
            breaker.failed()
        clock.advance(FIRST_BACKOFF_SECONDS)
        assert breaker.allow()
        breaker.succeeded()
        clock.advance(LOG_SECONDS)
        for _ in range(FAILURES_TO_OPEN):
            breaker.failed()
    assert changes == [True, False, True, False, True]
    assert [line["event"] for line in logs] == [
        "cache_breaker_opened",
        "cache_breaker_closed",
        "cache_breaker_opened",
    ]
    opened, closed, again = logs
    assert opened["backend"] == "redis"
    assert opened["failures"] == FAILURES_TO_OPEN
    assert opened["probe_in_seconds"] == FIRST_BACKOFF_SECONDS
    assert closed["open_seconds"] == 3 * FIRST_BACKOFF_SECONDS
    assert closed["skipped"] == 2
    assert again["openings"] == 2, "the opening not logged is not counted in the next line"


def test_a_policy_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="one failure"):
        BreakerPolicy(failures_to_open=0)
    with pytest.raises(ValueError, match="back-off"):
        BreakerPolicy(first_backoff_seconds=60, max_backoff_seconds=30)


# -- with a real Redis ----------------------------------------------------------------------


async def test_every_kind_of_store_has_its_series_from_the_first_scrape(
    app_factory: AppFactory,
) -> None:
    async with asgi_client(app_factory()) as http:
        exposition = await scrape(http)
    for backend in STORE_NAMES:
        for sample in ("reranker_cache_skipped_total", "reranker_cache_breaker_open"):
            assert exposition.value(sample, backend=backend) == 0, (sample, backend)


async def _rerank(http: httpx.AsyncClient, document: str) -> str:
    """The request's ``X-Reranker-Cache``; it is answered whatever Redis does."""
    response = await http.post("/rerank", json={"query": QUERY, "documents": [document]})
    assert response.status_code == 200, response.text
    return response.headers["x-reranker-cache"]


async def test_a_killed_redis_is_skipped_after_a_few_failures_and_used_again_once_back(
    checkpoint: Path, scoring_model: ServedModel, tmp_path: Path
) -> None:
    """Redis only. Killed: after ``FAILURES_TO_OPEN`` failed calls no request calls it (the
    errors stop, the skips go on, two per request: its lookup and its write). Started again on
    the same port: the breaker keeps skipping until its back-off ends, then the next lookup
    probes, closes it, and the cache works again."""
    clock = FakeClock()
    with redis_server(tmp_path) as redis:
        settings = make_settings(checkpoint, cache_size=0, cache_url=redis.url)
        app = create_app(settings, model=scoring_model, cache_clock=clock)
        async with asgi_client(app) as http:
            store = redis_store_of(app)
            assert await _rerank(http, "before") == "miss"
            await store.flush_writes()
            assert await _rerank(http, "before") == "hit"
            redis.kill()
            for attempt in range(FAILURES_TO_OPEN):  # a failed lookup, then a failed write
                assert await _rerank(http, f"down {attempt}") == "miss"
                await store.flush_writes()
                if _state(store.breaker) is BreakerState.OPEN:
                    break
            assert _state(store.breaker) is BreakerState.OPEN
            opened = await scrape(http)
            for attempt in range(5):
                assert await _rerank(http, f"skipped {attempt}") == "miss"
            assert store.writes_in_flight == 0
            skipping = await scrape(http)

            redis.restart()
            assert await _rerank(http, "back, before the back-off ends") == "miss"
            assert _state(store.breaker) is BreakerState.OPEN
            clock.advance(FIRST_BACKOFF_SECONDS)
            assert await _rerank(http, "after") == "miss"  # the probe: an empty, new Redis
            assert _state(store.breaker) is BreakerState.CLOSED
            await store.flush_writes()
            assert await _rerank(http, "after") == "hit"
            closed = await scrape(http)

    errors, skipped, is_open = (
        "reranker_cache_errors_total",
        "reranker_cache_skipped_total",
        "reranker_cache_breaker_open",
    )
    assert opened.value(errors, backend="redis") == FAILURES_TO_OPEN
    assert opened.value(is_open, backend="redis") == 1
    assert skipping.value(errors, backend="redis") == FAILURES_TO_OPEN, "a skipped call was made"
    assert skipping.value(skipped, backend="redis") - opened.value(skipped, backend="redis") == 10
    assert closed.value(errors, backend="redis") == FAILURES_TO_OPEN
    assert closed.value(skipped, backend="redis") - skipping.value(skipped, backend="redis") == 2
    assert closed.value(is_open, backend="redis") == 0
    assert closed.value(is_open, backend="memory") == 0


def _recording_events() -> tuple[CacheEvents, dict[str, list[object]]]:
    seen: dict[str, list[object]] = {"errors": [], "skipped": [], "breaker": []}
    events = CacheEvents(
        on_error=seen["errors"].append,
        on_skipped=seen["skipped"].append,
        on_breaker_open=lambda backend, is_open: seen["breaker"].append((backend, is_open)),
    )
    return events, seen


async def test_a_stuck_redis_times_out_opens_the_breaker_and_is_used_again_once_it_answers(
    tmp_path: Path,
) -> None:
    """Paused (SIGSTOP), Redis takes connections and answers nothing: each lookup waits out its
    timeout until the breaker opens; then lookups and writes skip it. Resumed (SIGCONT) and the
    back-off over, the probe finds the scores it kept."""
    clock = FakeClock()
    events, seen = _recording_events()
    with redis_server(tmp_path) as redis:
        store = RedisStore(
            redis.url,
            password=None,
            ttl_seconds=60,
            timeout_seconds=0.3,
            events=events,
            clock=clock,
        )
        try:
            await store.put_many([(b"kept", 1.5)])
            await store.flush_writes()
            redis.pause()
            try:
                with capture_logs() as logs:
                    for _ in range(FAILURES_TO_OPEN):
                        assert await store.get_many([b"kept"]) == [None]
                assert _state(store.breaker) is BreakerState.OPEN
                assert await store.get_many([b"kept"]) == [None]
                await store.put_many([(b"new", 2.0)])
                assert store.writes_in_flight == 0
            finally:
                redis.resume()
            assert seen["errors"] == ["redis"] * FAILURES_TO_OPEN
            assert seen["skipped"] == ["redis", "redis"]
            assert seen["breaker"] == [("redis", True)]
            [unavailable] = [line for line in logs if line["event"] == "cache_unavailable"]
            assert "timeout" in str(unavailable["error"]).lower(), unavailable
            assert [line["event"] for line in logs].count("cache_breaker_opened") == 1

            clock.advance(FIRST_BACKOFF_SECONDS)
            assert await store.get_many([b"kept", b"never"]) == [1.5, None]  # the probe
            assert _state(store.breaker) is BreakerState.CLOSED
            assert seen["breaker"] == [("redis", True), ("redis", False)]
            assert seen["errors"] == ["redis"] * FAILURES_TO_OPEN
        finally:
            await store.close()
