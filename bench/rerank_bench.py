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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoTokenizer

from contenders import (
    BestFixedBudget,
    Contender,
    CrossEncoderLoop,
    EngineInProcess,
    ModelCardBaseline,
    OpenVinoCrossEncoderLoop,
    ServiceOverHttp,
    build_seq_cls_checkpoint,
    model_flops_per_token,
)
from plot import plot_throughput
from reranker_service.engine.runner.build import RunnerOptions
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint
from workloads import WORKLOADS, Request, make_requests

REFERENCE_BUDGETS = {
    "cpu": [256, 512, 1024, 2048, 4096, 8192],
    "cuda": [4096, 8192, 16384, 32768, 65536],
}
REFERENCE = "best fixed budget"
# Minimum ratios (the engine-speed issue's targets), judged at concurrency 16.
REUSE_TARGETS = {"short": 1.6, "rag": 1.15, "long": 0.97}
SERVICE_VS_REFERENCE_TARGETS = {"short": 1.4, "rag": 1.05, "long": 0.9}
HTTP_OVERHEAD_TARGET_MS = 2.5
TARGET_CONCURRENCY = 16
# The CPU issue's targets: against the OpenVINO peer by concurrency, and against the best
# fixed budget at concurrency 8.
OPENVINO_TARGETS_BY_CONCURRENCY = {8: 2.0, 1: 1.5}
CPU_SERVICE_VS_REFERENCE_TARGETS = {"short": 1.2, "rag": 1.2}
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}
"""OpenVINO's inference precision for each --dtype; auto leaves OpenVINO's default."""
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


@dataclass(frozen=True)
class Cell:
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


def _percentile(sorted_values: list[float], share: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[round(share * 100) - 1]


async def _run_cell(
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
        workload=workload,
        concurrency=concurrency,
        contender=contender.name,
        requests=len(latencies),
        pairs=pairs,
        seconds=round(elapsed, 2),
        pairs_per_second=round(pairs / elapsed, 1),
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


def _ratios(cells: list[Cell]) -> dict[str, Any]:
    by_key = {(c.workload, c.concurrency, c.contender): c for c in cells}
    ratios: dict[str, Any] = {}
    for workload in sorted({c.workload for c in cells}):
        for concurrency in sorted({c.concurrency for c in cells}):
            engine = by_key.get((workload, concurrency, "engine"))
            without_reuse = by_key.get((workload, concurrency, "engine, reuse off"))
            card = by_key.get((workload, concurrency, "model card"))
            service = by_key.get((workload, concurrency, "service"))
            workers = next(
                (
                    c
                    for c in cells
                    if (c.workload, c.concurrency) == (workload, concurrency)
                    and c.contender.endswith(" workers")
                ),
                None,
            )
            reference = next(
                (c for c in cells if c.workload == workload and c.contender.startswith(REFERENCE)),
                None,
            )

            crossencoder = by_key.get((workload, concurrency, "crossencoder"))
            openvino = by_key.get((workload, concurrency, "openvino"))
            pairs = [
                ("service/crossencoder", service, crossencoder),
                ("service/openvino", service, openvino),
                (f"service/{REFERENCE}", service, reference),
                (f"engine/{REFERENCE}", engine, reference),
                (f"engine reuse off/{REFERENCE}", without_reuse, reference),
                ("reuse on/off", engine, without_reuse),
                ("engine/card", engine, card),
                ("service/card", service, card),
                ("service/engine", service, engine),
                ("workers/engine", workers, engine),
            ]
            for name, numerator, denominator in pairs:
                if numerator and denominator:
                    ratios[f"{name} pairs/s {workload} c={concurrency}"] = round(
                        numerator.pairs_per_second / denominator.pairs_per_second, 2
                    )
            if service and card and concurrency == 1:
                ratios[f"service/card p50 {workload} c=1"] = round(service.p50_ms / card.p50_ms, 2)
            if engine and service and concurrency == 1:
                ratios[f"service-engine p50 ms {workload} c=1"] = round(
                    service.p50_ms - engine.p50_ms, 2
                )
                ratios[f"service HTTP overhead p50 ms {workload} c=1"] = (
                    service.http_overhead_p50_ms
                )
    return ratios


def _targets(ratios: dict[str, Any]) -> list[str]:
    """The issue's targets, each met or missed, from ``ratios``."""
    lines = []

    def judge(name: str, key: str, minimum: float | None, maximum: float | None = None) -> None:
        value = ratios.get(key)
        if value is None:
            return
        met = (minimum is None or value >= minimum) and (maximum is None or value < maximum)
        bound = f">= {minimum}" if minimum is not None else f"< {maximum}"
        lines.append(f"- {'met' if met else 'MISSED'}: {name} = {value} (target {bound})")

    c = TARGET_CONCURRENCY
    for workload, minimum in REUSE_TARGETS.items():
        key = f"reuse on/off pairs/s {workload} c={c}"
        judge(f"engine reuse on/off, {workload}, c={c}", key, minimum)
    for workload, minimum in SERVICE_VS_REFERENCE_TARGETS.items():
        key = f"service/{REFERENCE} pairs/s {workload} c={c}"
        judge(f"service c={c} / {REFERENCE}, {workload}", key, minimum)
    for workload in WORKLOADS:
        key = f"service HTTP overhead p50 ms {workload} c=1"
        judge(f"HTTP overhead p50 ms, {workload}, c=1", key, None, HTTP_OVERHEAD_TARGET_MS)
    for workload, minimum in CPU_SERVICE_VS_REFERENCE_TARGETS.items():
        key = f"service/{REFERENCE} pairs/s {workload} c=8"
        judge(f"service c=8 / {REFERENCE}, {workload}", key, minimum)
    for workload in WORKLOADS:
        for concurrency, minimum in OPENVINO_TARGETS_BY_CONCURRENCY.items():
            key = f"service/openvino pairs/s {workload} c={concurrency}"
            judge(f"service / openvino, {workload}, c={concurrency}", key, minimum)
    # The GPU issue's targets, where their cells ran.
    judge("service / crossencoder, rag, c=64", "service/crossencoder pairs/s rag c=64", 2.5)
    judge("service / model card, rag, c=1", "service/card pairs/s rag c=1", 1.5)
    judge("service p50 / model card p50, short, c=1", "service/card p50 short c=1", None, 0.5)
    judge("engine reuse on/off, short, c=64", "reuse on/off pairs/s short c=64", 1.5)
    judge("engine reuse on/off, rag, c=64", "reuse on/off pairs/s rag c=64", 1.15)
    return lines


async def _reference_cell(
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
        f"  {REFERENCE}, {workload}: "
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
        workload=workload,
        concurrency=0,
        contender=f"{REFERENCE} ({best.budget})",
        requests=0,
        pairs=best.passes.pairs,
        seconds=round(best.seconds, 2),
        pairs_per_second=round(best.pairs_per_second, 1),
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


def _all_workers(device: str) -> str:
    """Two CPU workers, or one per GPU."""
    return "cpu,cpu" if device == "cpu" else "cuda:all"


def _checkpoint(choice: str, scratch: Path) -> str:
    if choice == "test":
        return str(build_checkpoint(scratch / "test-checkpoint"))
    if choice == "qwen3-reranker-0.6b":
        return str(build_checkpoint(scratch / "qwen3-reranker-0.6b", QWEN3_RERANKER_0_6B))
    return choice


async def _start_service(
    args: argparse.Namespace, checkpoint: str, scratch: Path, startup: dict[str, float]
) -> ServiceOverHttp:
    """The service, started twice on one fresh compile cache: cold, then warm. Each start's
    seconds to ready are printed and put in ``startup``; the warm one serves the cells."""
    cache = str(scratch / "compile-cache")
    for start in ("cold", "warm"):
        service = ServiceOverHttp(
            checkpoint,
            args.device,
            args.dtype,
            args.max_length,
            runner=args.runner,
            compile=args.compile,
            compile_cache=cache,
        )
        await service.start()
        compiled = service.compiled_seconds
        print(
            f"  service start-up to ready, {start} compile cache: {service.startup_seconds:.1f} s"
            + (
                f"; compiled runner serving after {compiled:.1f} s ({service.compile_states})"
                if compiled is not None
                else ""
            )
        )
        startup[start] = round(service.startup_seconds, 1)
        if compiled is not None:
            startup[f"{start}, compiled"] = round(compiled, 1)
        if start == "cold":
            await service.stop()
    return service


async def _main(
    args: argparse.Namespace, checkpoint: str, scratch: Path, startup: dict[str, float]
) -> list[Cell]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    config = AutoConfig.from_pretrained(checkpoint)
    peak_flops = _peak_flops(args.device, args.peak_tflops)
    contenders: dict[str, Contender] = {}
    if "card" in args.contenders:
        contenders["card"] = ModelCardBaseline(checkpoint, args.device, args.dtype, args.max_length)
    # The peers, where their libraries are installed (a GPU box without the bench extras still
    # measures everything else), on one seq-cls form of the weights.
    peers = {"crossencoder": "sentence_transformers", "openvino": "openvino"}
    wanted = [peer for peer in peers if peer in args.contenders]
    for peer in wanted:
        if importlib.util.find_spec(peers[peer]) is None:
            print(f"  {peer} skipped: {peers[peer]} is not installed (the bench extras: "
                  "pip install -e '.[bench]')", flush=True)  # fmt: skip
    wanted = [peer for peer in wanted if importlib.util.find_spec(peers[peer]) is not None]
    if "openvino" in wanted and args.device != "cpu":
        print("  openvino skipped: it is the CPU peer (--device cpu)", flush=True)
        wanted.remove("openvino")
    if wanted:
        seq_cls = build_seq_cls_checkpoint(checkpoint, str(scratch / "seq-cls"))
        if "crossencoder" in wanted:
            contenders["crossencoder"] = CrossEncoderLoop(seq_cls, args.device, args.max_length)
        if "openvino" in wanted:
            # The format the others are given; under auto, OpenVINO's own default (bf16
            # where the CPU computes it), as the CrossEncoder backend runs it.
            precision = OPENVINO_PRECISIONS.get(args.dtype)
            openvino = OpenVinoCrossEncoderLoop(seq_cls, args.max_length, precision)
            print(f"  openvino peer computes in {openvino.precision}", flush=True)
            contenders["openvino"] = openvino
    engines: list[EngineInProcess] = []
    service = None
    runner = RunnerOptions(runner=args.runner, compile=args.compile)
    engine_kinds = (
        ("engine", args.device, True, runner, None),
        ("engine-no-reuse", args.device, False, runner, None),
        # Reuse on, one worker per entry of --workers-device.
        ("engine-workers", args.workers_device or _all_workers(args.device), True, runner, None),
        # Each runner by name, side by side with the default.
        ("engine-padded", args.device, True, RunnerOptions(runner="padded"), "engine, padded"),
        ("engine-packed", args.device, True, RunnerOptions(runner="packed"), "engine, packed"),
        (
            "engine-compiled",
            args.device,
            True,
            RunnerOptions(runner="packed", compile="true"),
            "engine, packed, compiled",
        ),
    )
    for key, device, prefix_reuse, runner_options, name in engine_kinds:
        if key in args.contenders:
            # The first engine measures the pass cost; the others of the same runner start
            # from the same curve, so they batch alike and differ only in what they compare
            # (measurements move between runs).
            same_geometry = [e for e in engines if e.runner_options == runner_options]
            engine = EngineInProcess(
                checkpoint,
                device,
                args.dtype,
                args.max_length,
                prefix_reuse=prefix_reuse,
                pass_costs=same_geometry[0].pass_costs if same_geometry else None,
                runner=runner_options,
                name=name,
            )
            await engine.start()
            engines.append(engine)
            contenders[key] = engine
    if "service" in args.contenders:
        service = await _start_service(args, checkpoint, scratch, startup)
        contenders["service"] = service
    reference = None
    if "reference" in args.contenders:
        reference = BestFixedBudget(checkpoint, args.device, args.dtype, args.max_length)
    budgets = REFERENCE_BUDGETS["cuda" if args.device.startswith("cuda") else "cpu"]
    cells: list[Cell] = []
    try:
        for workload_name in args.workloads:
            workload = WORKLOADS[workload_name]
            requests = make_requests(tokenizer, workload, args.distinct_requests, args.seed)
            mean_pair = statistics.fmean(
                len(tokenizer.encode(doc)) + 80 for r in requests for doc in r.documents
            )
            flops = model_flops_per_token(config, round(mean_pair)) if peak_flops else None
            if reference is not None:
                cell = await _reference_cell(
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
                for contender in contenders.values():
                    cell = await _run_cell(
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
        for engine in engines:
            await engine.stop()
        if service is not None:
            await service.stop()
    return cells


def main() -> None:
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
        "--contenders", nargs="+",
        default=["card", "crossencoder", "engine", "engine-no-reuse", "service", "reference"],
        choices=["card", "crossencoder", "openvino", "engine", "engine-no-reuse", "engine-workers",
                 "engine-padded", "engine-packed", "engine-compiled", "service", "reference"],
    )  # fmt: skip
    parser.add_argument(
        "--runner", default="auto", choices=["auto", "padded", "packed"],
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
    args = parser.parse_args()
    if args.dtype is None:
        args.dtype = "float32" if args.device.startswith("cpu") else "auto"

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
    ratios = _ratios(cells)
    print()
    for name, value in ratios.items():
        print(f"- {name}: {value}")
    targets = _targets(ratios)
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
            "cells": [asdict(c) for c in cells],
            "ratios": ratios,
            "targets": targets,
            "startup_seconds": startup,
        }
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
