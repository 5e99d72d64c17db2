"""Pairs/s and tail latency: the model card's code vs the engine vs the service, in one run.

    python bench/rerank_bench.py                                   # test checkpoint, CPU
    python bench/rerank_bench.py --model qwen3-reranker-0.6b --device cuda
    python bench/rerank_bench.py --model /path/to/Qwen3-Reranker-0.6B --device cuda

Workloads (fixed seeds; lengths in the model's tokens): ``short`` 20 docs of 30-100 tokens,
``rag`` 50 docs log-normal around 250 tokens (cap 1024), ``long`` 8 docs of 1-4k tokens. Each
at concurrency 1, 4, 16 and 64, for every contender, cells interleaved: for each workload and
concurrency the three contenders run back to back, so drift of the machine hits all alike.

- model card: the Qwen3-Reranker card's code as the seed tutorial's app runs it, one request at
  a time, each request one batch padded to its longest pair, full LM head;
- openvino (``--contenders ... openvino``, CPU): the CPU peer, what sentence-transformers'
  ``CrossEncoder(..., backend="openvino")`` runs (an OpenVINO graph of the seq-cls form in
  ``--dtype``, under auto bf16 where the CPU computes it; batches of 32, one request at a time);
- engine: the service's batching engine in this process, no HTTP: the service's ceiling;
- engine, reuse off: the same engine recomputing every pair's whole prompt
  (``RERANKER_PREFIX_REUSE=false``);
- service: ``python -m reranker_service`` in its own process, over HTTP on 127.0.0.1; its
  batching figures are read from its own /metrics;
- engine, N workers (``--contenders ... engine-workers``): the engine with one worker per entry
  of ``--workers-device`` (default ``cpu,cpu``, or ``cuda:all`` on a GPU), reuse on;
- best fixed budget: every pair of the workload known up front, length-sorted into passes of a
  fixed padded-token budget, in process, without reuse; the best of several budgets. The
  ceiling the batch policy must approach (one row per workload, no concurrency).

Prints a Markdown table, the ratios and the issue's targets met or missed; ``--json`` writes
every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from contender_registry import (
    CONTENDERS,
    DEFAULT_CONTENDERS,
    BenchOptions,
    BenchRun,
    ContenderName,
    ContenderUnavailableError,
    build_contenders,
    select,
)
from contenders import BestFixedBudget, Contender, ServiceOverHttp, model_flops_per_token
from plot import plot_throughput
from reranker_service.engine.runner.names import RUNNER_NAMES
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint
from targets import REFERENCE_NAME, judge, ratios, significant
from workloads import WORKLOADS, Request, make_requests

REFERENCE_BUDGETS = {
    "cpu": [256, 512, 1024, 2048, 4096, 8192],
    "cuda": [4096, 8192, 16384, 32768, 65536],
}
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


@dataclass(frozen=True)
class Cell:
    key: ContenderName = field(repr=False)
    """The contender's key in the registry (its name as measured is ``contender``)."""
    workload: str
    concurrency: int
    contender: str
    requests: int
    pairs: int
    seconds: float
    pairs_per_second: float
    tokens_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    padding_efficiency: float | None
    pairs_per_pass: float | None
    peak_memory_mb: float | None
    mfu: float | None
    http_overhead_p50_ms: float | None
    """Service at concurrency 1 only: client latency minus the engine's own time, median."""

    def record(self) -> dict[str, Any]:
        """Its figures as ``--json`` writes them."""
        figures = asdict(self)
        del figures["key"]
        return figures


def _percentile(sorted_values: list[float], share: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(share * 100) - 1]


async def _run_cell(
    key: ContenderName,
    contender: Contender,
    requests: list[Request],
    workload: str,
    concurrency: int,
    seconds: float,
    flops_per_token: float | None,
    peak_flops: float | None,
) -> Cell:
    if isinstance(contender, ServiceOverHttp):
        await contender.snapshot()
    contender.start_cell()
    latencies: list[float] = []
    pairs = tokens = 0
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        nonlocal pairs, tokens
        while True:
            request = requests[index % len(requests)]
            started = time.perf_counter()
            scored_tokens = await contender.rerank(request)  # not `tokens += await`: racy
            latencies.append(time.perf_counter() - started)
            tokens += scored_tokens
            pairs += len(request.documents)
            index += concurrency
            if time.perf_counter() >= deadline:
                return

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    elapsed = time.perf_counter() - started
    passes = await contender.passes()
    latencies.sort()
    memory = contender.peak_memory_bytes()
    overhead = None
    # Alone on the engine (concurrency 1), what the engine does not account for is the HTTP
    # path; with company, it also holds waits for other requests' passes.
    if concurrency == 1 and isinstance(contender, ServiceOverHttp) and contender.overhead_seconds:
        overhead = round(statistics.median(contender.overhead_seconds) * 1000, 2)
    mfu = None
    if flops_per_token is not None and peak_flops is not None:
        # Counted on the tokens the passes computed (no padding, no reused prefix), where the
        # contender reports them; else on the tokens fed to the model.
        computed = passes.real_tokens or tokens
        mfu = round(computed * flops_per_token / elapsed / peak_flops, 4)
    return Cell(
        key=key,
        workload=workload,
        concurrency=concurrency,
        contender=contender.name,
        requests=len(latencies),
        pairs=pairs,
        seconds=round(elapsed, 2),
        pairs_per_second=significant(pairs / elapsed),
        tokens_per_second=round(tokens / elapsed, 1),
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 2),
        p95_ms=round(_percentile(latencies, 0.95) * 1000, 2),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 2),
        padding_efficiency=(
            round(passes.real_tokens / passes.padded_tokens, 3) if passes.padded_tokens else None
        ),
        pairs_per_pass=round(passes.pairs / passes.count, 2) if passes.count else None,
        peak_memory_mb=round(memory / 2**20, 1) if memory else None,
        mfu=mfu,
        http_overhead_p50_ms=overhead,
    )


def _peak_flops(device: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def _table(cells: list[Cell]) -> str:
    header = (
        "| workload | conc. | contender | requests | pairs/s | tokens/s | p50 ms | p95 ms "
        "| p99 ms | padding eff. | pairs/pass | peak MB | MFU | HTTP overhead p50 ms |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )

    def show(value: object) -> str:
        return "–" if value is None else str(value)

    rows = [
        f"| {c.workload} | {c.concurrency or '–'} | {c.contender} | {show(c.requests or None)} "
        f"| {c.pairs_per_second} "
        f"| {c.tokens_per_second} | {show(c.p50_ms or None)} | {show(c.p95_ms or None)} "
        f"| {show(c.p99_ms or None)} "
        f"| {show(c.padding_efficiency)} | {show(c.pairs_per_pass)} | {show(c.peak_memory_mb)} "
        f"| {show(c.mfu)} | {show(c.http_overhead_p50_ms)} |"
        for c in cells
    ]
    return "\n".join([header, *rows])


async def _reference_cell(
    key: ContenderName,
    reference: BestFixedBudget,
    requests: list[Request],
    workload: str,
    budgets: list[int],
    seconds: float,
    seed: int,
    flops_per_token: float | None,
    peak_flops: float | None,
) -> Cell:
    best, runs = await asyncio.to_thread(reference.best, requests, budgets, seconds, seed)
    print(
        f"  {REFERENCE_NAME}, {workload}: "
        + ", ".join(f"{run.budget}: {run.pairs_per_second:.1f}" for run in runs)
        + " pairs/s",
        flush=True,
    )
    passes = best.passes
    mfu = None
    if flops_per_token is not None and peak_flops is not None:
        mfu = round(passes.real_tokens * flops_per_token / best.seconds / peak_flops, 4)
    memory = reference.peak_memory_bytes()
    return Cell(
        key=key,
        workload=workload,
        concurrency=0,
        contender=f"{REFERENCE_NAME} ({best.budget})",
        requests=0,
        pairs=best.passes.pairs,
        seconds=round(best.seconds, 2),
        pairs_per_second=significant(best.pairs_per_second),
        tokens_per_second=round(passes.real_tokens / best.seconds, 1),
        p50_ms=0.0,
        p95_ms=0.0,
        p99_ms=0.0,
        padding_efficiency=round(passes.real_tokens / passes.padded_tokens, 3),
        pairs_per_pass=round(passes.pairs / passes.count, 2),
        peak_memory_mb=round(memory / 2**20, 1) if memory else None,
        mfu=mfu,
        http_overhead_p50_ms=None,
    )


def _checkpoint(choice: str, scratch: Path) -> str:
    if choice == "test":
        return str(build_checkpoint(scratch / "test-checkpoint"))
    if choice == "qwen3-reranker-0.6b":
        return str(build_checkpoint(scratch / "qwen3-reranker-0.6b", QWEN3_RERANKER_0_6B))
    return choice


async def _main(
    args: argparse.Namespace, checkpoint: str, scratch: Path, startup: dict[str, float]
) -> list[Cell]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    peak_flops = _peak_flops(args.device, args.peak_tflops)
    for line in args.skipped_contenders:
        print(line, flush=True)
    run = BenchRun(BenchOptions.from_args(args), checkpoint, scratch, startup)
    budgets = REFERENCE_BUDGETS["cuda" if args.device.startswith("cuda") else "cpu"]
    cells: list[Cell] = []
    try:
        built = await build_contenders(args.contenders, run)
        contenders = {k: c for k, c in built.items() if not isinstance(c, BestFixedBudget)}
        references = {k: c for k, c in built.items() if isinstance(c, BestFixedBudget)}
        for workload_name in args.workloads:
            workload = WORKLOADS[workload_name]
            requests = make_requests(tokenizer, workload, args.distinct_requests, args.seed)
            mean_pair = statistics.fmean(
                len(tokenizer.encode(doc)) + 80 for r in requests for doc in r.documents
            )
            flops = model_flops_per_token(config, round(mean_pair)) if peak_flops else None
            for key, reference in references.items():
                cell = await _reference_cell(
                    key,
                    reference,
                    requests,
                    workload_name,
                    budgets,
                    args.reference_seconds,
                    args.seed,
                    flops,
                    peak_flops,
                )
                cells.append(cell)
                print(_table([cell]).splitlines()[-1], flush=True)
            for concurrency in args.concurrency:
                for key, contender in contenders.items():
                    cell = await _run_cell(
                        key,
                        contender,
                        requests,
                        workload_name,
                        concurrency,
                        args.seconds,
                        flops,
                        peak_flops,
                    )
                    cells.append(cell)
                    print(_table([cell]).splitlines()[-1], flush=True)
    finally:
        await run.stop()
    return cells


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default="test",
        help="'test' (tiny checkpoint), 'qwen3-reranker-0.6b' (real shape, random weights) "
        "or a checkpoint path",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        help="default: auto on a GPU; float32 on a CPU, where auto may mean bf16 for the engine "
        "but not for the model card's code (bench/cpu_dtypes.py compares the formats)",
    )
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument(
        "--contenders", nargs="+", choices=list(CONTENDERS),
        help=f"default: {' '.join(DEFAULT_CONTENDERS)}, less those that cannot run here (a "
        "contender named here that cannot run stops the bench)",
    )  # fmt: skip
    parser.add_argument(
        "--runner", default="auto", choices=["auto", *RUNNER_NAMES],
        help="RERANKER_RUNNER of the engine and service contenders",
    )  # fmt: skip
    parser.add_argument(
        "--compile", default="auto", choices=["auto", "background", "true", "false"],
        help="RERANKER_COMPILE of the engine and service contenders",
    )  # fmt: skip
    parser.add_argument("--plot", type=Path, help="write pairs/s against concurrency here (PNG)")
    parser.add_argument(
        "--workers-device",
        help="RERANKER_DEVICE of the engine-workers contender; default: cpu,cpu or cuda:all",
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell")
    parser.add_argument(
        "--reference-seconds", type=float, default=3.0, help="per budget of the reference"
    )
    parser.add_argument("--distinct-requests", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, help="device bf16 peak, for MFU")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    return parser


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "float32" if args.device.startswith("cpu") else "auto"
    try:
        selection = select(args.contenders, args.device)
    except ContenderUnavailableError as exc:
        parser.error(str(exc))
    args.contenders, args.skipped_contenders = selection.names, selection.skipped

    torch.set_num_threads(os.cpu_count() or 1)
    startup: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = _checkpoint(args.model, Path(scratch))
        machine = (
            torch.cuda.get_device_name()
            if args.device.startswith("cuda")
            else f"{platform.machine()} CPU, {os.cpu_count()} cores"
        )
        print(f"model: {args.model}; device: {args.device} ({machine}); {args.seconds} s per cell")
        cells = asyncio.run(_main(args, checkpoint, Path(scratch), startup))
    print()
    print(_table(cells))
    figures = ratios(cells)
    print()
    for name, value in figures.items():
        print(f"- {name}: {value}")
    targets = judge(figures)
    print()
    print("\n".join(targets))
    if startup:
        print(f"- service start-up to ready (s): {startup}")
    if args.plot:
        if importlib.util.find_spec("matplotlib") is None:
            print("- no plot: matplotlib is not installed (the bench extras)")
        else:
            plot_throughput(cells, args.plot, f"{args.model} on {machine}")
    if args.json:
        result = {
            "model": args.model,
            "device": args.device,
            "dtype": args.dtype,
            "machine": machine,
            "cells": [c.record() for c in cells],
            "ratios": figures,
            "targets": targets,
            "startup_seconds": startup,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
