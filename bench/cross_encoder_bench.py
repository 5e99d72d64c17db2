"""Encoder cross-encoders on the CPU: the service against sentence-transformers' CrossEncoder, and
two models served by one process against each alone (issue 35).

    python bench/cross_encoder_bench.py --checkpoints ~/.cache/ce-base --json out.json \\
        --markdown bench/results/cpu-cross-encoders-base-shapes.md

For a BERT-base-shaped and an XLM-RoBERTa-base-shaped checkpoint (random weights; built once into
``--checkpoints`` and reused from there), in ``--rounds`` interleaved rounds on the same warm
models, each cell ``--seconds`` of closed-loop clients (the cell ends when the clients' last
requests are answered, so that every pair counted was scored inside it):

- crossencoder, the peer: ``CrossEncoder(path, max_length=512, device="cpu")`` and
  ``.predict(pairs, batch_size=32)``, fp32, one request at a time (concurrent clients queue), as
  its users call it;
- service: ``python -m reranker_service`` over HTTP (``bench/contenders.py``'s
  ``ServiceOverHttp``, score cache off), ``RERANKER_DTYPE=float32``, the peer's arithmetic, and
  ``auto`` where it chooses another format on this CPU (the run says what it chose);
- at concurrency 1 and 8, the contenders' order turning each round.

Then one service process serving both (``RERANKER_MODELS=bert=...,xlmr=...``, ``--two-model-dtype``)
driven by 8 clients, 4 naming each model, against the single-model services of the same format at
concurrency 8 in the same round: the target is the two-model sum within 10 % of the better single.

Requests (``workloads.RAG_WORDS``, fixed seed, the same for every contender and both checkpoints):
a query of 8-12 words and 20-50 documents of 60-200 words, drawn from ``VOCABULARY``, words both
checkpoints' tokenizers keep whole, so that a pair is as many tokens to either model and the two
models cost alike per pair.

Per cell: pairs/s, p50 latency, padding efficiency and pairs per pass (the peer's as
``predict`` batches, the service's from its /metrics), and for the service the share of the wall
time inside forward passes and the mean tokenize, queue and inference milliseconds of a request
(its ``Server-Timing``), and the CPU cores the scoring process kept busy (CPU seconds over
wall seconds: the service's process, or this one for the peer); per checkpoint and concurrency,
the ratio service / peer. ``--service-devices cpu cpu,cpu`` adds the service with two workers
per model, each running its own passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from contender_registry import CROSSENCODER, SERVICE, ContenderName
from contenders import Contender, EncoderCrossEncoderLoop, Passes, ServiceOverHttp
from rerank_bench import Cell, _run_cell
from reranker_service.tiny_checkpoint import CheckpointKind, build_kind
from reranker_service.tiny_checkpoint.encoders import BERT_MAX_LENGTH
from workloads import RAG_WORDS, Request, make_word_requests

CHECKPOINTS: dict[str, CheckpointKind] = {"bert": "bert", "xlmr": "xlm-roberta"}
"""The served name of each checkpoint, and its kind."""
PEER = "crossencoder"
TARGET_AT = 8
"""The concurrency the issue's 1.5x target is judged at."""
SERVICE_TARGET = 1.5
SHARING_TARGET = 0.9
"""The two-model sum over the better single-model figure, at least."""
VOCABULARY = (
    "an", "at", "city", "day", "do", "document", "for", "it", "no", "on", "one", "or", "page",
    "passage", "query", "retrieve", "small", "sun", "the", "to", "true", "us", "we", "you",
)  # fmt: skip
"""The words of the test tokenizers' corpus (``tiny_checkpoint.corpus``) that both encoder
tokenizers, BERT's WordPiece and XLM-RoBERTa's Unigram, keep whole: a text of them is as many
tokens to either model (each run prints the tokens per pair it measured)."""


def base_checkpoint(directory: Path, kind: CheckpointKind, shape: str) -> Path:
    """``kind``'s checkpoint of ``shape`` in ``directory``, built there the first time (XLM-R's
    250k-row embedding takes a while) and reused after; a build cut short is never reused."""
    target = directory / f"{kind}-{shape}"
    if (target / "config.json").is_file():
        return target
    partial = directory / f"{kind}-{shape}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    build_kind(partial, kind, shape=shape)
    partial.rename(target)
    return target


def two_model_requests(
    requests: Sequence[Request], names: Sequence[str], clients: int
) -> list[Request]:
    """The requests for ``clients`` clients split evenly between ``names``: ``_run_cell`` gives
    client ``c`` the entries ``c, c + clients, ...``, so entry ``i`` names the model of client
    ``i % clients``; each client still cycles through distinct requests."""
    share = clients // len(names)
    return [
        replace(requests[i % len(requests)], model=names[(i % clients) // share])
        for i in range(clients * len(requests))
    ]


@dataclass
class _CountsByModel:
    """A service contender that also counts the pairs answered for each model a request names."""

    service: ServiceOverHttp
    pairs: dict[str, int]

    @property
    def name(self) -> str:
        return self.service.name

    async def rerank(self, request: Request) -> int:
        tokens = await self.service.rerank(request)
        self.pairs[request.model or ""] += len(request.documents)
        return tokens

    def start_cell(self) -> None:
        self.pairs.clear()
        self.service.start_cell()

    async def passes(self) -> Passes:
        return await self.service.passes()

    def peak_memory_bytes(self) -> int | None:
        return self.service.peak_memory_bytes()


@dataclass(frozen=True)
class Measured:
    """One cell of one round, with where its time went."""

    round: int
    checkpoint: str
    """``bert``, ``xlmr``, or ``bert+xlmr`` for the two-model process."""
    dtype: str
    """What the contender computed in (``auto`` resolved)."""
    cell: Cell
    passes: int
    padded_tokens: int
    real_tokens: int
    pass_seconds: float | None
    """Inside forward passes, where the contender reports it (the service)."""
    request_ms: dict[str, float]
    """The service's mean tokenize, queue, inference and total ms per request (Server-Timing)."""
    pairs_by_model: dict[str, float]
    """The two-model cell's pairs/s of each model."""
    cores_busy: float | None = None
    """CPU seconds of the scoring process (the service's; the peer's is this one) per second."""
    workers: int = 1
    """The service's workers per model (``RERANKER_DEVICE=cpu,cpu``: 2)."""

    @property
    def contender(self) -> str:
        return self.cell.contender

    @property
    def pairs_per_second(self) -> float:
        return self.cell.pairs_per_second

    @property
    def ms_per_padded_token(self) -> float:
        """Inside the passes where known, else the whole wall time (the peer's is all predict)."""
        seconds = self.pass_seconds if self.pass_seconds else self.cell.seconds
        return 1000 * seconds / self.padded_tokens if self.padded_tokens else 0.0

    def record(self) -> dict[str, Any]:
        figures = asdict(self)
        figures["cell"] = self.cell.record()
        figures["ms_per_padded_token"] = round(self.ms_per_padded_token, 4)
        return figures


async def _measure(
    contender: Contender,
    requests: list[Request],
    *,
    round_: int,
    checkpoint: str,
    dtype: str,
    concurrency: int,
    seconds: float,
) -> Measured:
    service = contender.service if isinstance(contender, _CountsByModel) else contender
    timings_before = 0
    cpu_before = (
        service.cpu_seconds() if isinstance(service, ServiceOverHttp) else time.process_time()
    )
    if isinstance(service, ServiceOverHttp):
        timings_before = len(service.server_timings)
        if service is not contender:
            await service.snapshot()  # _run_cell snapshots a ServiceOverHttp it is handed
    key: ContenderName = SERVICE if isinstance(service, ServiceOverHttp) else CROSSENCODER
    cell = await _run_cell(
        key, contender, requests, RAG_WORDS.name, concurrency, seconds, None, None
    )
    cpu_after = (
        service.cpu_seconds() if isinstance(service, ServiceOverHttp) else time.process_time()
    )
    passes = await contender.passes()  # the service's: /metrics since the cell's snapshot
    request_ms: dict[str, float] = {}
    if isinstance(service, ServiceOverHttp):
        timings = service.server_timings[timings_before:]
        request_ms = {
            phase: round(statistics.fmean(t[phase] for t in timings), 1)
            for phase in ("tokenize", "queue", "inference", "total")
        }
    by_model = {}
    if isinstance(contender, _CountsByModel):
        by_model = {m: round(p / cell.seconds, 2) for m, p in sorted(contender.pairs.items())}
    return Measured(
        round_,
        checkpoint,
        dtype,
        cell,
        passes.count,
        passes.padded_tokens,
        passes.real_tokens,
        round(passes.seconds, 2) if passes.seconds else None,
        request_ms,
        by_model,
        round((cpu_after - cpu_before) / cell.seconds, 2),
        len(service.device.split(",")) if isinstance(service, ServiceOverHttp) else 1,
    )


def _show(value: object) -> str:
    return "–" if value is None or value == {} else str(value)


ROUND_HEADER = (
    "| round | checkpoint | conc. | contender | computes in | requests | pairs/s | p50 ms "
    "| padding eff. | pairs/pass | ms per padded token | share in passes | cores busy "
    "| tokenize / queue / inference ms |\n"
    "|---:|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _round_row(m: Measured) -> str:
    c = m.cell
    share = round(m.pass_seconds / c.seconds, 2) if m.pass_seconds else None
    phases = (
        " / ".join(str(m.request_ms[p]) for p in ("tokenize", "queue", "inference"))
        if m.request_ms
        else None
    )
    return (
        f"| {m.round} | {m.checkpoint} | {c.concurrency} | {c.contender} | {m.dtype} "
        f"| {c.requests} | {c.pairs_per_second} | {c.p50_ms} | {_show(c.padding_efficiency)} "
        f"| {_show(c.pairs_per_pass)} | {m.ms_per_padded_token:.3f} | {_show(share)} "
        f"| {_show(m.cores_busy)} | {_show(phases)} |"
    )


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def ratio_rows(measured: Sequence[Measured]) -> list[dict[str, Any]]:
    """Per checkpoint, concurrency and service contender: the mean pairs/s and p50 of the service
    and of the peer over the rounds, the ratio of the means and each round's ratio."""
    cells: dict[tuple[str, int, str], dict[int, Measured]] = defaultdict(dict)
    for m in measured:
        if "+" not in m.checkpoint:
            cells[(m.checkpoint, m.cell.concurrency, m.contender)][m.round] = m
    rows = []
    for (checkpoint, concurrency, contender), by_round in cells.items():
        if contender == PEER:
            continue
        peer = cells.get((checkpoint, concurrency, PEER), {})
        rounds = sorted(set(by_round) & set(peer))
        if not rounds:
            continue
        ours = [by_round[r].pairs_per_second for r in rounds]
        theirs = [peer[r].pairs_per_second for r in rounds]
        rows.append(
            {
                "checkpoint": checkpoint,
                "concurrency": concurrency,
                "service": contender,
                "dtype": by_round[rounds[0]].dtype,
                "peer_pairs_per_second": round(_mean(theirs), 2),
                "service_pairs_per_second": round(_mean(ours), 2),
                "peer_p50_ms": round(_mean([peer[r].cell.p50_ms for r in rounds]), 1),
                "service_p50_ms": round(_mean([by_round[r].cell.p50_ms for r in rounds]), 1),
                "ratio": round(_mean(ours) / _mean(theirs), 2),
                "ratio_per_round": [round(a / b, 2) for a, b in zip(ours, theirs, strict=True)],
            }
        )
    return rows


def sharing_rows(measured: Sequence[Measured], names: Sequence[str]) -> list[dict[str, Any]]:
    """Per round: the two-model cell's pairs/s (the sum over its models, and each model's), each
    model's single-model service computing in the same format at the same concurrency, the
    better single figure and the sum over it; and the sum in each model's own units (its pairs/s
    over its figure alone), which is 1.0 when sharing loses nothing even where the two models
    cost differently per pair."""
    rows = []
    for shared in (m for m in measured if "+" in m.checkpoint):
        alone = {
            m.checkpoint: m
            for m in measured
            if m.round == shared.round
            and m.contender != PEER
            and m.workers == 1
            and "+" not in m.checkpoint
            and m.dtype == shared.dtype
            and m.cell.concurrency == shared.cell.concurrency
        }
        if not all(name in alone for name in names):
            continue
        best = max(alone[name].pairs_per_second for name in names)
        rows.append(
            {
                "round": shared.round,
                "two_models_pairs_per_second": shared.pairs_per_second,
                "by_model": shared.pairs_by_model,
                "alone": {name: alone[name].pairs_per_second for name in names},
                "better_single": best,
                "sum_over_better_single": round(shared.pairs_per_second / best, 2),
                "own_units": round(
                    sum(
                        shared.pairs_by_model.get(name, 0.0) / alone[name].pairs_per_second
                        for name in names
                    ),
                    2,
                ),
            }
        )
    return rows


def _served_text(served: dict[str, Any]) -> str:
    """What each service process computes in, why where ``auto`` chose, and its batch budget."""
    parts = []
    for name, figures in served.items():
        if "dtype" not in figures:  # the two-model process: a format per model
            parts.append(f"{name}: " + ", ".join(f"{m} {d}" for m, d in figures.items()))
            continue
        text = f"{name}: {figures['dtype']}, max_batch_tokens {figures['max_batch_tokens']}"
        if (choice := figures.get("dtype_choice")) is not None:
            text += (
                f" (auto: {choice['reason']}; self-check max difference "
                f"{choice['self_check_max_difference']:.2g})"
            )
        parts.append(text)
    return "; ".join(parts)


def _report(
    measured: list[Measured],
    ratios: list[dict[str, Any]],
    sharing: list[dict[str, Any]],
    context: dict[str, Any],
) -> list[str]:
    lines = [
        f"- command: `{context['command']}`",
        f"- machine: {context['machine']}; torch {context['torch']}, "
        f"sentence-transformers {context['sentence_transformers']}",
        f"- load average (1, 5, 15 min) before: {context['load_before']}, "
        f"after: {context['load_after']}",
        f"- workload: {RAG_WORDS.description}; {context['distinct_requests']} distinct requests, "
        f"seed {context['seed']}; {context['vocabulary']} whole words; tokens per pair "
        f"(mean): {context['tokens_per_pair']}",
        f"- served: {_served_text(context['served'])}",
        f"- {context['seconds']} s per cell, {context['rounds']} rounds, order turning each round",
        "",
        "Service ÷ peer, pairs/s (mean over the rounds; each round's ratio in brackets):",
        "",
        "| checkpoint | conc. | service | peer pairs/s | service pairs/s | ratio (per round) "
        "| peer p50 ms | service p50 ms |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for r in ratios:
        per_round = ", ".join(map(str, r["ratio_per_round"]))
        lines.append(
            f"| {r['checkpoint']} | {r['concurrency']} | {r['service']} "
            f"| {r['peer_pairs_per_second']} | {r['service_pairs_per_second']} "
            f"| **{r['ratio']}** ({per_round}) | {r['peer_p50_ms']} | {r['service_p50_ms']} |"
        )
    if sharing:
        names = list(sharing[0]["alone"])
        lines += [
            "",
            f"Two models in one process ({context['two_model_service']}), "
            f"c={context['two_model_concurrency']} split evenly, against each model's "
            "single-model service at the same concurrency, same round:",
            "",
            "| round | two-model sum pairs/s | by model | "
            + " | ".join(f"{n} alone" for n in names)
            + " | sum ÷ better single | sum in each model's own units |",
            "|---:|---:|---|" + "---:|" * len(names) + "---:|---:|",
        ]
        for s in sharing:
            by_model = ", ".join(f"{k} {v}" for k, v in s["by_model"].items())
            alone = " | ".join(str(s["alone"][n]) for n in names)
            lines.append(
                f"| {s['round']} | {s['two_models_pairs_per_second']} | {by_model} | {alone} "
                f"| **{s['sum_over_better_single']}** | {s['own_units']} |"
            )
    lines += ["", "Targets:"]
    for r in ratios:
        if r["concurrency"] == TARGET_AT:
            met = "met" if r["ratio"] >= SERVICE_TARGET else "MISSED"
            lines.append(
                f"- {r['checkpoint']}, {r['service']} ÷ {PEER} at c={TARGET_AT} "
                f"≥ {SERVICE_TARGET}: {r['ratio']} ({met})"
            )
    if sharing:
        mean_share = round(_mean([s["sum_over_better_single"] for s in sharing]), 2)
        met = "met" if mean_share >= SHARING_TARGET else "MISSED"
        lines.append(
            f"- two models at once, sum ÷ better single ≥ {SHARING_TARGET}: "
            f"{mean_share} over the rounds ({met})"
        )
    lines += ["", "Every cell:", "", ROUND_HEADER, *map(_round_row, measured)]
    return lines


async def _started(service: ServiceOverHttp, stack: contextlib.AsyncExitStack) -> dict[str, Any]:
    started = time.perf_counter()
    await service.start()
    stack.push_async_callback(service.stop)
    info = await service.info()
    print(
        f"  {service.name}: ready in {time.perf_counter() - started:.0f} s, "
        + ", ".join(f"{m['name']} in {m['dtype']}" for m in info["models"]),
        flush=True,
    )
    return info


async def _run(
    args: argparse.Namespace,
    checkpoints: dict[str, Path],
    requests: list[Request],
    context: dict[str, Any],
) -> list[Measured]:
    """Start every contender, warm it, then the rounds."""
    contenders: dict[str, list[tuple[str, Contender]]] = {}
    served: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, path in checkpoints.items():
            print(f"{name}: starting the contenders", flush=True)
            row: list[tuple[str, Contender]] = [
                ("float32", EncoderCrossEncoderLoop(str(path), "cpu", args.max_length))
            ]
            for device in args.service_devices:
                workers = len(device.split(","))
                seen: set[str] = set()
                for dtype in args.service_dtypes:
                    label = f"service {dtype}" + (f", {workers} workers" if workers > 1 else "")
                    service = ServiceOverHttp(str(path), device, dtype, args.max_length, name=label)
                    info = await _started(service, stack)
                    chosen = info["models"][0]["dtype"]
                    served[f"{name}, {label}"] = {
                        "dtype": chosen,
                        "dtype_choice": info.get("dtype_choice"),
                        "max_batch_tokens": info["models"][0]["max_batch_tokens"],
                    }
                    if dtype == "auto" and chosen in seen:
                        print(f"  auto chose {chosen}, as measured already: not run twice")
                        await service.stop()
                        continue
                    seen.add(chosen)
                    row.append((chosen, service))
            contenders[name] = row
        shared: ServiceOverHttp | None = None
        shared_dtype = ""
        if args.two_models and len(checkpoints) > 1:
            models = ",".join(f"{name}={path}" for name, path in checkpoints.items())
            shared = ServiceOverHttp(
                str(next(iter(checkpoints.values()))),
                "cpu",
                args.two_model_dtype,
                args.max_length,
                name=f"service {args.two_model_dtype}, two models",
                models=models,
            )
            info = await _started(shared, stack)
            served["two models"] = {m["name"]: m["dtype"] for m in info["models"]}
            shared_dtype = "/".join(sorted({m["dtype"] for m in info["models"]}))
        context["served"] = served
        for row in contenders.values():
            for _, contender in row:
                await contender.rerank(requests[0])  # warm: allocations, oneDNN's primitives
        mixed = two_model_requests(requests, list(checkpoints), args.two_model_concurrency)
        if shared is not None:
            for name in checkpoints:
                await shared.rerank(next(r for r in mixed if r.model == name))
        return await _rounds(args, contenders, (shared, shared_dtype), requests, mixed)


async def _rounds(
    args: argparse.Namespace,
    contenders: dict[str, list[tuple[str, Contender]]],
    two_models: tuple[ServiceOverHttp | None, str],
    requests: list[Request],
    mixed: list[Request],
) -> list[Measured]:
    shared, shared_dtype = two_models
    measured: list[Measured] = []
    for round_ in range(1, args.rounds + 1):
        print(f"\nround {round_}\n\n{ROUND_HEADER}", flush=True)
        for name, row in contenders.items():
            for concurrency in args.concurrency:
                ordered = row if round_ % 2 else row[::-1]
                for dtype, contender in ordered:
                    m = await _measure(
                        contender,
                        requests,
                        round_=round_,
                        checkpoint=name,
                        dtype=dtype,
                        concurrency=concurrency,
                        seconds=args.seconds,
                    )
                    measured.append(m)
                    print(_round_row(m), flush=True)
        if shared is not None:
            counting = _CountsByModel(shared, defaultdict(int))
            m = await _measure(
                counting,
                mixed,
                round_=round_,
                checkpoint="+".join(contenders),
                dtype=shared_dtype,
                concurrency=args.two_model_concurrency,
                seconds=args.seconds,
            )
            measured.append(m)
            print(_round_row(m) + f" by model: {m.pairs_by_model}", flush=True)
    return measured


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoints", type=Path, help="folder the checkpoints are built in once and reused "
        "from; default: a temporary folder, built afresh",
    )  # fmt: skip
    parser.add_argument(
        "--shape", default="base", choices=["base", "tiny"],
        help="base: BERT-base and XLM-R-base shapes; tiny: a smoke run",
    )  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=list(CHECKPOINTS), default=list(CHECKPOINTS))
    parser.add_argument("--seconds", type=float, default=20.0, help="per cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, TARGET_AT])
    parser.add_argument(
        "--service-dtypes", nargs="+", default=["float32", "auto"],
        help="RERANKER_DTYPE of the service contenders; auto is dropped where it chooses float32",
    )  # fmt: skip
    parser.add_argument(
        "--service-devices", nargs="+", default=["cpu"],
        help="RERANKER_DEVICE of the service contenders, each its own row: cpu (one worker), "
        "cpu,cpu (two workers, one pass each at a time)",
    )  # fmt: skip
    parser.add_argument(
        "--two-models", action=argparse.BooleanOptionalAction, default=True,
        help="also one process serving both checkpoints",
    )  # fmt: skip
    parser.add_argument(
        "--two-model-dtype", default="auto",
        help="the two-model process's RERANKER_DTYPE; it is compared with the single-model "
        "services of the format it computes in",
    )  # fmt: skip
    parser.add_argument("--two-model-concurrency", type=int, default=TARGET_AT)
    parser.add_argument("--max-length", type=int, default=BERT_MAX_LENGTH)
    parser.add_argument("--distinct-requests", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    context: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "sentence_transformers": _version("sentence-transformers"),
        "load_before": [round(x, 2) for x in os.getloadavg()],
        "seconds": args.seconds,
        "rounds": args.rounds,
        "seed": args.seed,
        "distinct_requests": args.distinct_requests,
        "two_model_concurrency": args.two_model_concurrency,
        "two_model_service": f"RERANKER_DTYPE={args.two_model_dtype}",
    }
    with contextlib.ExitStack() as stack:
        folder = args.checkpoints or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        checkpoints = {
            name: base_checkpoint(folder, CHECKPOINTS[name], args.shape) for name in args.only
        }
        tokenizers = {name: AutoTokenizer.from_pretrained(p) for name, p in checkpoints.items()}
        requests = make_word_requests(RAG_WORDS, VOCABULARY, args.distinct_requests, args.seed)
        context["vocabulary"] = len(VOCABULARY)
        context["tokens_per_pair"] = {
            name: _mean_pair_tokens(tokenizer, requests, args.max_length)
            for name, tokenizer in tokenizers.items()
        }
        print(
            f"{len(requests)} requests, {_mean([len(r.documents) for r in requests]):.1f} "
            f"documents each; tokens per pair: {context['tokens_per_pair']}",
            flush=True,
        )
        measured = asyncio.run(_run(args, checkpoints, requests, context))
    context["load_after"] = [round(x, 2) for x in os.getloadavg()]
    ratios = ratio_rows(measured)
    sharing = sharing_rows(measured, list(checkpoints))
    lines = _report(measured, ratios, sharing, context)
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        result = {
            **context,
            "cells": [m.record() for m in measured],
            "ratios": ratios,
            "two_models": sharing,
        }
        args.json.write_text(json.dumps(result, indent=2))


def _mean_pair_tokens(tokenizer: Any, requests: Sequence[Request], max_length: int) -> float:
    lengths = [
        len(tokenizer(r.query, doc, truncation=True, max_length=max_length)["input_ids"])
        for r in requests
        for doc in r.documents
    ]
    return round(_mean(lengths), 1)


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


if __name__ == "__main__":
    main()
