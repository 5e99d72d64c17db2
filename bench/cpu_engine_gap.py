"""Where the engine's time goes against the best fixed budget, on the same requests.

    python bench/cpu_engine_gap.py                                  # 0.6B shape, short
    python bench/cpu_engine_gap.py --model ./mid --workload rag --requests 4

Scores the same requests (1) as the best fixed budget scores them (every pair whole, sorted by
length, cut into passes of ``--budget`` padded tokens, no queue), (2) through the service's
engine in process and (3) through the service over HTTP, ``--concurrency`` requests at a time,
in rounds. For each it prints the wall time, the time spent inside forward passes, the tokens
those passes computed and the milliseconds per computed token, so that a gap splits into: time
outside the passes (host work, tokenizing, HTTP, waiting), passes that compute a token more
slowly (small passes, attention after a held prefix), and passes that compute more tokens (the
prefix's own pass, padding).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoTokenizer

from contenders import BestFixedBudget, EngineInProcess, ServiceOverHttp
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint
from workloads import WORKLOADS, Request, make_requests


@dataclass(frozen=True)
class Row:
    name: str
    wall_seconds: float
    pass_seconds: float
    passes: int
    pairs: int
    computed_tokens: int

    @property
    def ms_per_token(self) -> float:
        """Inside the passes, per token they computed."""
        return 1000 * self.pass_seconds / self.computed_tokens

    def cells(self) -> str:
        in_passes = self.pass_seconds / self.wall_seconds
        return (
            f"| {self.name} | {self.wall_seconds:.1f} | {self.pass_seconds:.1f} | "
            f"{in_passes:.2f} | {self.passes} | {self.pairs / self.passes:.1f} | "
            f"{self.computed_tokens} | {self.ms_per_token:.3f} | "
            f"{self.pairs / self.wall_seconds:.2f} |"
        )


def _fixed_budget(
    contender: BestFixedBudget, requests: list[Request], budget: int, round_: int
) -> Row:
    run, _ = contender.best(requests, [budget], seconds=float("inf"), seed=round_)
    return Row(
        f"fixed budget {budget}",
        run.seconds,
        run.seconds,
        run.passes.count,
        run.passes.pairs,
        run.passes.padded_tokens,
    )


async def _concurrent(
    contender: EngineInProcess | ServiceOverHttp, requests: list[Request], concurrency: int
) -> Row:
    """The requests, ``concurrency`` at a time, and the passes the contender reports."""
    contender.start_cell()
    if isinstance(contender, ServiceOverHttp):
        await contender.snapshot()
    queue = list(requests)

    async def client() -> None:
        while queue:
            await contender.rerank(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    passes = await contender.passes()
    return Row(
        f"{contender.name}, c={concurrency}",
        wall,
        passes.seconds,
        passes.count,
        passes.pairs,
        passes.padded_tokens,
    )


async def _rounds(checkpoint: str, requests: list[Request], args: argparse.Namespace) -> str:
    """Each round: the fixed budget, then the engine and the service at each concurrency, on
    the same warm models, so that a machine that slows down slows every contender of a round
    alike."""
    engine = EngineInProcess(checkpoint, "cpu", "auto", 8192, prefix_reuse=True)
    contenders: list[EngineInProcess | ServiceOverHttp] = [engine]
    if args.service:
        contenders.append(ServiceOverHttp(checkpoint, "cpu", "auto", 8192))
    async with contextlib.AsyncExitStack() as started:
        for contender in contenders:
            await contender.start()
            started.push_async_callback(contender.stop)
            await contender.rerank(requests[0])  # warm, as the budget's run warms its shape
        fixed = BestFixedBudget(checkpoint, "cpu", engine.dtype, 8192)
        for round_ in range(1, args.rounds + 1):
            rows = [await asyncio.to_thread(_fixed_budget, fixed, requests, args.budget, round_)]
            for concurrency in args.concurrency:
                for contender in contenders:
                    rows.append(await _concurrent(contender, requests, concurrency))
            print(f"\nround {round_}\n\n{HEADER}", flush=True)
            for row in rows:
                print(row.cells() + f" {row.ms_per_token / rows[0].ms_per_token:.2f} |")
        return engine.dtype


HEADER = (
    "| contender | wall s | in passes s | share in passes | passes | pairs/pass | "
    "tokens computed | ms per computed token | pairs/s | ms per token ÷ fixed budget's |\n"
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-reranker-0.6b")
    parser.add_argument("--workload", default="short", choices=sorted(WORKLOADS))
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--budget", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--service",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the service over HTTP (its own process, score cache off)",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.model
        if args.model == "qwen3-reranker-0.6b":
            shape = QWEN3_RERANKER_0_6B
            checkpoint = str(build_checkpoint(Path(scratch) / "0.6b", shape))
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        requests = make_requests(tokenizer, WORKLOADS[args.workload], args.requests, seed=7)
        print(f"{args.model}, {args.workload}, {args.requests} requests")
        dtype = asyncio.run(_rounds(checkpoint, requests, args))
        print(f"\nserved as {dtype}")


if __name__ == "__main__":
    main()
