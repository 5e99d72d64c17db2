"""What a Redis outage costs a request, with the score cache's circuit breaker and without.

    python bench/cache_breaker.py                     # the tiny test checkpoint, CPU
    python bench/cache_breaker.py --model ./mid-model --rounds 20 --timeout-ms 50

One loaded model, five apps over it, in process (httpx's ASGI transport, the lifespan running),
each with its score cache in Redis only (no in-process store), so that every lookup is Redis's:
- ``cache off``: no cache at all, the floor;
- ``refused``: nothing listens on Redis's port (Redis killed, its host up): connections are
  refused at once;
- ``stuck``: a ``redis-server`` paused with SIGSTOP: it takes connections and answers nothing
  (a hung Redis, or a host gone behind a firewall that drops packets): every call waits out
  ``RERANKER_CACHE_TIMEOUT_MS``;
each of the last two with the breaker as shipped and with one that never opens (the service
before it had one). Every request brings new documents, so nothing is ever cached. One client
sends requests one at a time, going round the apps in rounds (in turning order) so that drift of
the machine hits all alike; the warm-up rounds before also open the breakers. Prints p50 and p90
per app, each p50 against cache off, and what each app's metrics counted: Redis errors, calls
skipped by the breaker, whether it is open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from checkout import use_tests_support
from reranker_service.app import create_app, load_options
from reranker_service.engine.cache_breaker import BREAKER_POLICY, BreakerPolicy
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.observability.logging import configure_logging
from reranker_service.settings import Settings
from reranker_service.tiny_checkpoint import build_checkpoint

NEVER_OPENS = BreakerPolicy(failures_to_open=sys.maxsize)
"""What the service did before it had a breaker: every call goes to Redis."""


@dataclass(frozen=True)
class Variant:
    name: str
    redis: str | None
    """``refused``, ``stuck`` or None (cache off)."""
    breaker_policy: BreakerPolicy


VARIANTS = (
    Variant("cache off", None, BREAKER_POLICY),
    Variant("refused, breaker", "refused", BREAKER_POLICY),
    Variant("refused, no breaker", "refused", NEVER_OPENS),
    Variant("stuck, breaker", "stuck", BREAKER_POLICY),
    Variant("stuck, no breaker", "stuck", NEVER_OPENS),
)


@contextlib.contextmanager
def _stuck_redis(directory: str) -> Iterator[str]:
    """The tests' redis-server on a free loopback port, paused once it answers; its URL."""
    use_tests_support()
    from tests.support.redis_server import redis_server

    with redis_server(Path(directory)) as server:
        server.pause()
        yield server.url


def _free_port() -> int:
    use_tests_support()
    from tests.support.prometheus_server import free_port

    return free_port()


@contextlib.asynccontextmanager
async def _client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app in process, its lifespan running."""
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http,
    ):
        yield http


def _counted(app: FastAPI) -> str:
    """What the app's own metrics say about Redis."""
    registry = app.state.metrics.registry

    def value(name: str) -> int:
        return int(registry.get_sample_value(name, {"backend": "redis"}) or 0)

    is_open = "open" if value("reranker_cache_breaker_open") else "closed"
    errors, skipped = value("reranker_cache_errors_total"), value("reranker_cache_skipped_total")
    return f"{errors} | {skipped} | {is_open}"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def _run(args: argparse.Namespace, model: ServedModel, urls: dict[str, str]) -> None:
    base = {"model": args.model_path, "device": args.device, "host": "127.0.0.1"}
    apps = {
        variant.name: create_app(
            Settings(
                **base,
                cache_size=0,
                cache_url=urls[variant.redis] if variant.redis else None,
                cache_timeout_ms=args.timeout_ms,
            ),
            model=model,
            cache_breaker_policy=variant.breaker_policy,
        )
        for variant in VARIANTS
    }
    sent = 0

    async def request(http: httpx.AsyncClient) -> float:
        nonlocal sent
        sent += 1
        documents = [f"document {sent}-{i}: paris is the capital of france" for i in range(4)]
        started = time.perf_counter()
        response = await http.post("/rerank", json={"query": "capital?", "documents": documents})
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        return elapsed

    latencies: dict[str, list[float]] = {name: [] for name in apps}
    async with contextlib.AsyncExitStack() as running:
        clients = {
            name: await running.enter_async_context(_client(app)) for name, app in apps.items()
        }
        for http in clients.values():
            for _ in range(args.warm_up):
                await request(http)
        names = list(clients)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                for _ in range(args.requests_per_round):
                    latencies[name].append(await request(clients[name]))
        counted = {name: _counted(app) for name, app in apps.items()}

    floor = statistics.median(latencies["cache off"]) * 1000
    print(
        f"model: {args.model or 'tiny test checkpoint'} on {args.device}; {platform.machine()}, "
        f"{os.cpu_count()} cpus; Redis timeout {args.timeout_ms:g} ms; 4 new documents a "
        f"request; {args.warm_up} warm-up requests, then {args.rounds} rounds of "
        f"{args.requests_per_round} per app"
    )
    print(
        "| Redis | requests | p50 ms | p90 ms | p50 − cache off, ms | errors | skipped | breaker |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, values in latencies.items():
        p50, p90 = statistics.median(values) * 1000, _percentile(values, 0.9) * 1000
        counts = "– | – | –" if name == "cache off" else counted[name]
        print(f"| {name} | {len(values)} | {p50:.2f} | {p90:.2f} | {p50 - floor:+.2f} | {counts} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint; default: build the tiny test checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timeout-ms", type=float, default=20.0, help="RERANKER_CACHE_TIMEOUT_MS")
    parser.add_argument("--warm-up", type=int, default=20, help="requests per app before timing")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--requests-per-round", type=int, default=20)
    args = parser.parse_args()
    with (
        open(os.devnull, "w") as sink,
        tempfile.TemporaryDirectory() as scratch,
        _stuck_redis(scratch) as stuck_url,
    ):
        configure_logging("info", "json", stream=sink)
        args.model_path = args.model or str(build_checkpoint(Path(scratch) / "tiny"))
        settings = Settings(model=args.model_path, device=args.device, host="127.0.0.1")
        model = load_single_device_model(load_options(settings))
        urls = {"refused": f"redis://127.0.0.1:{_free_port()}/0", "stuck": stuck_url}
        asyncio.run(_run(args, model, urls))


if __name__ == "__main__":
    main()
