"""The engine on a CPU in each number format: throughput, and how far its scores are from fp32.

    python bench/cpu_dtypes.py --model qwen3-reranker-0.6b     # the 0.6B shape, random weights
    python bench/cpu_dtypes.py --model test                    # the tiny test checkpoint
    python bench/cpu_dtypes.py --model /path/to/checkpoint --dtypes float32 auto

Loads the checkpoint once per format (``float32``, and ``auto``, which is bf16 where the CPU
computes it and the start-up self-check agrees) into an engine as the service does, then
sends the same requests to each engine in turn, ``--rounds`` times in turning order so that
drift of the machine hits all alike: each round, all requests at once. Reports each
format's pairs/s and tokens/s over all rounds, its ratio to fp32's, and the largest and 99th
percentile |P(yes) - P(yes) in fp32| over every document of every request. With random weights
scores sit near 0.5, where the sigmoid is steepest: an upper end for a given logit error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from transformers import AutoTokenizer

from contenders import EngineInProcess
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint
from workloads import Request, Workload, make_requests

# Documents of 20-250 tokens: passes mix lengths; few, so that fp32 on the 0.6B shape takes
# seconds, not minutes, a round.
CPU_WORKLOAD = Workload("cpu", 8, lambda rng: rng.randint(20, 250), "8 docs of 20-250 tokens")


@dataclass(frozen=True)
class FormatResult:
    requested: str
    served: str
    """The format the engine chose (``auto`` resolves to bf16 or fp32)."""
    pairs_per_second: float
    tokens_per_second: float
    vs_fp32: float
    max_difference: float
    p99_difference: float


async def _round(
    engine: EngineInProcess, requests: list[Request]
) -> tuple[float, int, list[float]]:
    """All requests at once: seconds, tokens, and every document's score in request order."""
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(engine.score(request) for request in requests))
    seconds = time.perf_counter() - started
    tokens = sum(outcome.total_tokens for outcome in outcomes)
    return seconds, tokens, [score for outcome in outcomes for score in outcome.scores]


def _checkpoint(choice: str, scratch: Path) -> str:
    if choice == "qwen3-reranker-0.6b":
        return str(build_checkpoint(scratch / "0.6b-shape", QWEN3_RERANKER_0_6B))
    if choice == "test":
        return str(build_checkpoint(scratch / "test"))
    return choice


async def _main(args: argparse.Namespace, checkpoint: str) -> list[FormatResult]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    requests = make_requests(tokenizer, CPU_WORKLOAD, args.requests, args.seed)
    engines = {
        dtype: EngineInProcess(checkpoint, "cpu", dtype, args.max_length, prefix_reuse=True)
        for dtype in args.dtypes
    }
    for engine in engines.values():
        await engine.start()
        await _round(engine, requests[:1])  # warm
    seconds = dict.fromkeys(engines, 0.0)
    tokens = dict.fromkeys(engines, 0)
    scores: dict[str, list[float]] = {}
    names = list(engines)
    for index in range(args.rounds):
        shift = index % len(names)
        for dtype in names[shift:] + names[:shift]:
            took, computed, got = await _round(engines[dtype], requests)
            seconds[dtype] += took
            tokens[dtype] += computed
            scores.setdefault(dtype, got)
    for engine in engines.values():
        await engine.stop()
    pairs = args.rounds * sum(len(request.documents) for request in requests)
    reference = scores["float32"]
    fp32_rate = tokens["float32"] / seconds["float32"]
    results = []
    for dtype, engine in engines.items():
        differences = sorted(abs(a - b) for a, b in zip(scores[dtype], reference, strict=True))
        results.append(
            FormatResult(
                requested=dtype,
                served=engine.dtype,
                pairs_per_second=round(pairs / seconds[dtype], 2),
                tokens_per_second=round(tokens[dtype] / seconds[dtype], 1),
                vs_fp32=round(tokens[dtype] / seconds[dtype] / fp32_rate, 2),
                max_difference=float(f"{differences[-1]:.3g}"),
                p99_difference=float(
                    f"{statistics.quantiles(differences, n=100, method='inclusive')[98]:.3g}"
                ),
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="test", help="qwen3-reranker-0.6b, test, or a checkpoint path"
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "auto"])
    parser.add_argument("--requests", type=int, default=4, help="distinct requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if "float32" not in args.dtypes:
        parser.error("--dtypes must include float32, the reference")
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint(args.model, Path(scratch))
        results = asyncio.run(_main(args, checkpoint))
    print(
        f"model: {args.model}; machine: {platform.machine()}, {os.cpu_count()} cpus; "
        f"{args.rounds} rounds of {args.requests} concurrent requests, {CPU_WORKLOAD.description}"
    )
    print("| dtype | served as | pairs/s | tokens/s | vs fp32 | max \\|Δ\\| | p99 \\|Δ\\| |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.requested} | {r.served} | {r.pairs_per_second} | {r.tokens_per_second} | "
            f"{r.vs_fp32}x | {r.max_difference} | {r.p99_difference} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"model": args.model, "results": [asdict(r) for r in results]}, indent=2)
        )


if __name__ == "__main__":
    main()
