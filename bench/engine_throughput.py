"""Engine throughput in process (no HTTP): pairs/s and latency at several concurrencies.

    python bench/engine_throughput.py                      # builds the tiny test checkpoint
    python bench/engine_throughput.py --model /path/to/Qwen3-Reranker-0.6B --device cuda

Each concurrent client sends requests back to back for ``--seconds``; every request is a query
with ``--docs`` documents whose lengths are drawn (fixed seed) between ``--min-words`` and
``--max-words``. Prints a Markdown table and writes JSON next to it if ``--json`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from reranker_service.engine.batcher import BatchReport
from reranker_service.engine.model import LoadOptions, load_scoring_model
from reranker_service.engine.service import EngineConfig, RerankEngine
from reranker_service.settings import DEFAULT_INSTRUCTION
from reranker_service.tiny_checkpoint import build_checkpoint

_WORDS = [
    "the",
    "capital",
    "of",
    "france",
    "paris",
    "river",
    "gravity",
    "batch",
    "token",
    "query",
    "document",
    "relevance",
]


@dataclass(frozen=True)
class Row:
    concurrency: int
    requests: int
    pairs: int
    seconds: float
    pairs_per_second: float
    tokens_per_second: float
    p50_ms: float
    p95_ms: float
    pairs_per_pass: float
    padding_efficiency: float


def _documents(rng: random.Random, count: int, min_words: int, max_words: int) -> list[str]:
    return [
        " ".join(rng.choice(_WORDS) for _ in range(rng.randint(min_words, max_words)))
        for _ in range(count)
    ]


async def _measure(
    engine: RerankEngine, reports: list[BatchReport], concurrency: int, args: argparse.Namespace
) -> Row:
    rng = random.Random(args.seed)
    workload = [
        (
            f"query {i} " + rng.choice(_WORDS),
            _documents(rng, args.docs, args.min_words, args.max_words),
        )
        for i in range(64)
    ]
    latencies: list[float] = []
    pairs = tokens = 0
    reports.clear()
    deadline = time.perf_counter() + args.seconds

    async def client(offset: int) -> None:
        nonlocal pairs, tokens
        index = offset
        while time.perf_counter() < deadline:
            query, docs = workload[index % len(workload)]
            started = time.perf_counter()
            outcome = await engine.rerank(DEFAULT_INSTRUCTION, query, docs)
            latencies.append(time.perf_counter() - started)
            pairs += len(docs)
            tokens += outcome.total_tokens
            index += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    passes = [r for r in reports if not r.failed]
    return Row(
        concurrency=concurrency,
        requests=len(latencies),
        pairs=pairs,
        seconds=round(elapsed, 3),
        pairs_per_second=round(pairs / elapsed, 1),
        tokens_per_second=round(tokens / elapsed, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p95_ms=round(quantiles[94] * 1000, 2),
        pairs_per_pass=round(sum(r.pairs for r in passes) / max(len(passes), 1), 2),
        padding_efficiency=round(
            sum(r.real_tokens for r in passes) / max(sum(r.padded_tokens for r in passes), 1), 3
        ),
    )


async def _run(args: argparse.Namespace, model_path: str) -> list[Row]:
    model = load_scoring_model(
        LoadOptions(model_path, None, args.device, args.dtype, args.max_length)
    )
    reports: list[BatchReport] = []
    engine = RerankEngine(
        model,
        EngineConfig(
            max_batch_tokens=args.max_batch_tokens, max_queued_pairs=1_000_000, tokenizer_threads=2
        ),
        observer=reports.append,
    )
    await engine.start()
    print(f"calibrated pass overhead: {engine.pass_overhead_tokens} token-equivalents")
    rows = [await _measure(engine, reports, c, args) for c in args.concurrency]
    await engine.stop()
    return rows


def _table(rows: list[Row]) -> str:
    columns = ["concurrency", "requests", "pairs/s", "tokens/s", "p50 ms", "p95 ms"]
    columns += ["pairs/pass", "padding eff."]
    header = "| " + " | ".join(columns) + " |\n" + "|---:" * len(columns) + "|"
    lines = [
        f"| {r.concurrency} | {r.requests} | {r.pairs_per_second} | {r.tokens_per_second} | "
        f"{r.p50_ms} | {r.p95_ms} | {r.pairs_per_pass} | {r.padding_efficiency} |"
        for r in rows
    ]
    return "\n".join([header, *lines])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint; default: build the tiny test checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--docs", type=int, default=20)
    parser.add_argument("--min-words", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=80)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model or str(build_checkpoint(Path(scratch) / "tiny"))
        rows = asyncio.run(_run(args, model_path))
    print(
        f"model: {args.model or 'tiny test checkpoint'}; machine: {platform.machine()}, "
        f"{platform.processor() or 'unknown cpu'}; docs/request: {args.docs}, "
        f"words/doc: {args.min_words}-{args.max_words}"
    )
    print(_table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))


if __name__ == "__main__":
    main()
