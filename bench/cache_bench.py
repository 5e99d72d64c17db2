"""The score cache on a replayed workload: cache off against on, in one run.

    python bench/cache_bench.py                       # test checkpoint, CPU, a local redis-server
    python bench/cache_bench.py --model ./mid-model --requests 60

The ``rag`` workload's requests, replayed so that about half the requests repeat an earlier
one (seeded). Each cell scores the same replay once, split among ``c`` clients, on an engine
whose cache starts empty: off, in process (``memory``), and Redis only (``redis``, when
``redis-server`` is installed: a fresh one on a free loopback port). Cells are interleaved per
concurrency. Prints pairs/s, p50 and p95, the hit share, and each request's lookup time
(median): for ``redis``, the round trip a request pays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer

from checkout import use_tests_support
from reranker_service.engine.loading import LoadOptions, load_single_device_model
from reranker_service.engine.rerank_engine import EngineConfig, RerankEngine
from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.score_cache import (
    CacheEvents,
    MemoryStore,
    RedisStore,
    ScoreCache,
    ScoreStore,
    cache_identity,
)
from reranker_service.settings import DEFAULT_INSTRUCTION
from reranker_service.tiny_checkpoint import build_checkpoint
from workloads import WORKLOADS, Request, make_requests


@dataclass(frozen=True)
class Cell:
    cache: str
    concurrency: int
    pairs_per_second: float
    p50_ms: float
    p95_ms: float
    hit_share: float
    lookup_p50_ms: float | None


def replay(requests: list[Request], length: int, repeat_share: float, seed: int) -> list[Request]:
    """``length`` requests: each an earlier one again with ``repeat_share`` chance, else the
    next new one."""
    rng = random.Random(seed)
    fresh = iter(requests)
    sequence: list[Request] = []
    for _ in range(length):
        if sequence and rng.random() < repeat_share:
            sequence.append(rng.choice(sequence))
        else:
            sequence.append(next(fresh))
    return sequence


@contextlib.contextmanager
def _redis(directory: str) -> Iterator[str | None]:
    """The tests' redis-server on a free loopback port, its URL; None where none is installed."""
    if shutil.which("redis-server") is None:
        yield None
        return
    use_tests_support()
    from tests.support.redis_server import redis_server

    with redis_server(Path(directory)) as server:
        yield server.url


def _stores(kind: str, redis_url: str | None) -> list[ScoreStore]:
    events = CacheEvents()
    if kind == "memory":
        return [MemoryStore(1_000_000, 3600, events)]
    if kind == "redis":
        assert redis_url is not None
        return [RedisStore(redis_url, password=None, ttl_seconds=3600, timeout_seconds=1.0,
                           events=events)]  # fmt: skip
    return []


async def _cell(
    model: ServedModel,
    kind: str,
    redis_url: str | None,
    sequence: list[Request],
    concurrency: int,
) -> Cell:
    described = model.description
    stores = _stores(kind, redis_url)
    cache = None
    if stores:
        identity = cache_identity(
            described.model, f"{described.revision}-{time.time_ns()}", described.dtype, 0
        )  # a fresh key space per cell: every cell starts with an empty cache
        cache = ScoreCache(identity, stores)
    engine = RerankEngine(model, EngineConfig(None, 1_000_000, 1000, 2), score_cache=cache)
    await engine.start()
    latencies: list[float] = []
    lookups: list[float] = []
    hits = pairs = 0

    async def client(start: int) -> None:
        nonlocal hits, pairs
        for request in sequence[start::concurrency]:
            began = time.perf_counter()
            outcome = await engine.rerank(DEFAULT_INSTRUCTION, request.query, request.documents)
            latencies.append(time.perf_counter() - began)
            hits += outcome.cache_hits
            pairs += len(outcome.pair_tokens)
            if outcome.cache_lookup_seconds is not None:
                lookups.append(outcome.cache_lookup_seconds)

    started = time.perf_counter()
    await asyncio.gather(*(client(start) for start in range(concurrency)))
    elapsed = time.perf_counter() - started
    await engine.stop()
    latencies.sort()
    return Cell(
        cache=kind,
        concurrency=concurrency,
        pairs_per_second=round(pairs / elapsed, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 1),
        p95_ms=round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
        hit_share=round(hits / pairs, 3),
        lookup_p50_ms=round(statistics.median(lookups) * 1000, 3) if lookups else None,
    )


async def _main(args: argparse.Namespace, checkpoint: str, redis_url: str | None) -> list[Cell]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = load_single_device_model(
        LoadOptions(checkpoint, None, args.device, "float32", args.max_length)
    )
    distinct = make_requests(tokenizer, WORKLOADS["rag"], args.requests, args.seed)
    sequence = replay(distinct, args.requests, args.repeat_share, args.seed)
    kinds = ["off", "memory"] + (["redis"] if redis_url else [])
    cells = []
    for concurrency in args.concurrency:
        for kind in kinds:
            cell = await _cell(model, kind, redis_url, sequence, concurrency)
            print(_row(cell), flush=True)
            cells.append(cell)
    return cells


def _row(cell: Cell) -> str:
    lookup = "–" if cell.lookup_p50_ms is None else cell.lookup_p50_ms
    return (
        f"| {cell.cache} | {cell.concurrency} | {cell.pairs_per_second} | {cell.p50_ms} "
        f"| {cell.p95_ms} | {cell.hit_share} | {lookup} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="test", help="'test' or a checkpoint path")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--requests", type=int, default=80, help="length of the replay")
    parser.add_argument("--repeat-share", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.model
        if checkpoint == "test":
            checkpoint = str(build_checkpoint(Path(scratch) / "test-checkpoint"))
        with _redis(scratch) as redis_url:
            found = "yes" if redis_url else "not installed"
            print(f"model: {args.model}; {args.requests} rag requests, about "
                  f"{args.repeat_share:.0%} repeated; redis: {found}")  # fmt: skip
            print("| cache | conc. | pairs/s | p50 ms | p95 ms | hit share | lookup p50 ms |")
            print("|---|---:|---:|---:|---:|---:|---:|")
            cells = asyncio.run(_main(args, checkpoint, redis_url))
    by_key = {(cell.cache, cell.concurrency): cell for cell in cells}
    print()
    for concurrency in args.concurrency:
        off, on = by_key.get(("off", concurrency)), by_key.get(("memory", concurrency))
        if off and on:
            print(f"- cache on / off, pairs/s, c={concurrency}: "
                  f"{on.pairs_per_second / off.pairs_per_second:.2f}; "
                  f"p50 {on.p50_ms / off.p50_ms:.2f}")  # fmt: skip
    # Identical pairs in flight are computed once, so concurrency costs the cache no hits: the
    # hit share at the highest concurrency within 10 % of the one at 1.
    lowest, highest = min(args.concurrency), max(args.concurrency)
    for kind in ("memory", "redis"):
        alone, crowded = by_key.get((kind, lowest)), by_key.get((kind, highest))
        if alone and crowded and highest > lowest:
            met = crowded.hit_share >= 0.9 * alone.hit_share
            print(f"- {kind}: hit share c={highest} {crowded.hit_share} against c={lowest} "
                  f"{alone.hit_share} (target: within 10 %): "
                  f"{'met' if met else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
