"""One command that proves a GPU: the compiled packed runner, its CUDA graphs, its scores and its
speed on the 0.6B shape (random weights), with the machine's own torch, within a time budget.

    python3 bench/gpu_check.py --out DIR                 # a GPU: 0.6B shape, bf16
    python3 bench/gpu_check.py --out DIR --device cpu    # the parts a CPU can run (CI)

Writes ``DIR/gpu-check.md`` and the same figures as ``DIR/gpu-check.json`` after every step, so
that a run stopped by its budget (``--budget-seconds``, default 480) still reports what it
reached, and says what it did not. Steps, in order:

1. the machine: GPU, torch, transformers, triton, a C compiler, the compile features found;
2. compile, cold: every bucket compiled into an empty compile cache, then the graphed buckets
   captured (seconds each), as the service's background compile does;
3. the self-check the service runs before it swaps the compiled runner in;
4. each graphed bucket's replay against an eager pass (scores and milliseconds);
5. no recompile after prepare, passes from two threads (``error_on_recompile``);
6. no hidden synchronisation in a graphed pass (``torch.cuda.set_sync_debug_mode("error")``);
7. pass time per bucket with and without its graph, and the padding cost (one 200-token pair
   in the largest bucket against in its own);
8. scores against the model card (an independent transcription, fp32 on the CPU): the padded
   runner, the packed runner eager and compiled, in the served format (bf16 on a GPU: 0.02) and
   in fp32 (1e-4);
9. compile, warm: a new process compiling from the cache the cold one filled;
10. the bench cells the GPU targets need (rag at concurrency 1 and 64, short at 1; the
    crossencoder and model-card contenders), each target printed met or MISSED.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from checkout import use_tests_support
from reranker_service.engine.loading import LoadOptions, load_model
from reranker_service.engine.runner.build import PackedRunnerUpgrade, RunnerOptions
from reranker_service.engine.runner.compiler import compile_support, compiled_entries
from reranker_service.engine.runner.packed import PackedOptions, PackedRunner
from reranker_service.engine.runner.protocol import (
    ModelRunner,
    PassBatch,
    PassPair,
    PassShape,
    ServedModel,
)
from reranker_service.engine.runner.self_check import self_check
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"compile_cold_seconds": 150.0, "compile_warm_seconds": 45.0}
"""The GPU issue's start-up budget: every bucket compiled (and captured) on one GPU."""
CARD_QUERY = "What is the capital of France?"
CARD_DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    "Ünïcödé: 中文文本, русский текст, emoji 🙂",
    "word " * 300,
]
BENCH_CELLS = ("--workloads", "rag", "short", "--concurrency", "1", "64")


@dataclass
class Report:
    """The check's findings so far, written out after each step."""

    out: Path
    budget_seconds: float
    started: float = field(default_factory=time.perf_counter)
    sections: list[tuple[str, list[str]]] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    not_reached: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def left(self) -> float:
        return self.budget_seconds - self.elapsed

    def add(self, title: str, lines: list[str], **figures: Any) -> None:
        with self._lock:
            self.sections.append((title, lines))
            self.figures[title] = figures
            self.write()
        print(f"== {title} ({self.elapsed:.0f} s)\n" + "\n".join(lines), flush=True)

    def skip(self, title: str, why: str) -> None:
        self.not_reached.append(f"{title}: {why}")
        self.add(title, [f"not run: {why}"], skipped=why)

    def write(self) -> None:
        lines = [
            "# GPU check",
            "",
            f"{self.elapsed:.0f} s of a {self.budget_seconds:.0f} s budget.",
            "",
        ]
        for title, body in self.sections:
            lines += [f"## {title}", "", *body, ""]
        if self.not_reached:
            lines += ["## Not reached", "", *(f"- {item}" for item in self.not_reached), ""]
        (self.out / "gpu-check.md").write_text("\n".join(lines))
        document = {
            "elapsed_seconds": round(self.elapsed, 1),
            "budget_seconds": self.budget_seconds,
            "steps": self.figures,
            "not_reached": self.not_reached,
        }
        (self.out / "gpu-check.json").write_text(json.dumps(document, indent=2, default=str))


def _stop_at_budget(report: Report, step: list[str]) -> None:
    """Past the budget, report the step that was running as not reached and end the process:
    a compile cannot be interrupted from Python."""

    def stop() -> None:
        with report._lock:
            report.not_reached.append(f"{step[0]}: stopped at the budget")
            report.not_reached.extend(f"{later}: not reached" for later in step[1:])
            report.write()
        print(f"budget of {report.budget_seconds:.0f} s spent during {step[0]}", flush=True)
        os._exit(0)

    timer = threading.Timer(report.budget_seconds, stop)
    timer.daemon = True
    timer.start()


@contextmanager
def _timed() -> Iterator[Callable[[], float]]:
    started = time.perf_counter()
    yield lambda: time.perf_counter() - started


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(run: Callable[[], object], device: torch.device, repeats: int = 5) -> float:
    run()
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def _machine(device: torch.device) -> list[str]:
    import transformers

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    support = compile_support(device.type)
    compilers = {name: shutil.which(name) for name in ("cc", "gcc", "g++")}
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.machine()} CPU, {os.cpu_count()} cores"
    )
    return [
        f"- device: {name}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, triton "
        f"{triton_version}, Python {platform.python_version()}",
        f"- C compilers: {', '.join(f'{k}={v}' for k, v in compilers.items())}",
        f"- compile features: {support.missing or 'all found'}",
    ]


def _load(
    checkpoint: str, device: str, dtype: str, max_length: int, max_batch_tokens: int | None,
    cache: Path, compile_mode: str = "background", runner: str = "auto",
) -> ServedModel:  # fmt: skip
    options = RunnerOptions(
        runner=runner, compile=compile_mode, compile_cache=cache, max_batch_tokens=max_batch_tokens
    )
    return load_model(LoadOptions(checkpoint, None, device, dtype, max_length, options))


def _upgrade(model: ServedModel) -> PackedRunnerUpgrade:
    upgrade = model.upgrade_of(0)
    if not isinstance(upgrade, PackedRunnerUpgrade):
        raise RuntimeError("this checkpoint gets no compiled packed runner")
    return upgrade


def _eager(upgrade: PackedRunnerUpgrade) -> PackedRunner:
    """The same weights, packed, uncompiled (a dense mask)."""
    options = PackedOptions(upgrade.options.buckets, compiled=False)
    return PackedRunner(
        upgrade.decoder, upgrade.score_direction, upgrade.pad_token_id, upgrade.description,
        options,
    )  # fmt: skip


def _filled(model: ServedModel, tokens: int, seed: int = 0) -> PassBatch:
    """Plain pairs of unlike lengths filling a stream of at most ``tokens`` (at least one
    pair: a short one where none fits)."""
    words = ["relevance", "passage", "Paris", "river", "token", "the", "of"]
    pairs: list[PassPair] = []
    used = 0
    for index in range(seed, seed + 4096):
        count = 1 + (index * 7) % 40
        document = " ".join(words[(index + k) % len(words)] for k in range(count))
        (sequence,) = model.encoder.encode(DEFAULT_INSTRUCTION, f"q{index % 10}", [document])
        if used + len(sequence) <= tokens or (not pairs and count == 1):
            pairs.append(PassPair(sequence))
            used += len(sequence)
        if tokens - used < 64 and pairs:
            break
    return PassBatch(pairs)


def _compile_cold(report: Report, model: ServedModel, runner: PackedRunner) -> dict[str, Any]:
    device = torch.device(runner.description.device)
    with _timed() as compile_seconds:
        summary = runner.compile_buckets()
    captures = {}
    for tokens in runner.buckets_to_capture:
        captures[tokens] = round(runner.capture(tokens), 3)
    total = compile_seconds()
    compiled = dict(summary.bucket_seconds)
    lines = [
        "| bucket (tokens) | compile s | capture s |",
        "|---:|---:|---:|",
        *(
            f"| {tokens} | {seconds:.1f} | {captures.get(tokens, '–')} |"
            for tokens, seconds in summary.bucket_seconds
        ),
        "",
        f"- every bucket compiled and captured: {total:.1f} s "
        f"({_judged(total, TARGETS['compile_cold_seconds'], device)})",
        f"- compile cache: {summary.cache_hits} graphs read, {summary.cache_misses} compiled",
    ]
    figures = {
        "bucket_compile_seconds": compiled,
        "bucket_capture_seconds": captures,
        "total_seconds": round(total, 1),
        "cache_hits": summary.cache_hits,
        "cache_misses": summary.cache_misses,
    }
    report.add("Compile, cold cache", lines, **figures)
    return figures


def _judged(seconds: float, target: float, device: torch.device) -> str:
    """``seconds`` against a GPU's start-up target."""
    if device.type != "cuda":
        return f"the target, ≤ {target:.0f} s, is a GPU's"
    return f"target ≤ {target:.0f} s: {'met' if seconds <= target else 'MISSED'}"


def _self_check(report: Report, runner: PackedRunner, upgrade: PackedRunnerUpgrade) -> None:
    checked = self_check(runner, upgrade.reference(), upgrade.probe, upgrade.score_bound)
    report.add(
        "Self-check",
        [f"- {checked.passes} passes, {checked.pairs} pairs, launched before any result: "
         f"max |Δ score| {checked.max_difference:.2e} (bound {upgrade.score_bound})"],
        max_difference=checked.max_difference, passes=checked.passes,
    )  # fmt: skip


def _replays(report: Report, model: ServedModel, runner: PackedRunner, eager: PackedRunner) -> None:
    device = torch.device(runner.description.device)
    lines = [
        "| bucket | pairs | max abs Δ logit | replay ms | eager ms |",
        "|---:|---:|---:|---:|---:|",
    ]
    figures: dict[str, Any] = {}
    for tokens in runner.graphed_buckets:
        batch = _filled(model, tokens - 64, seed=tokens)
        replayed = runner.launch(batch).result()
        reference = eager.launch(batch).result()
        worst = max(abs(a - b) for a, b in zip(replayed, reference, strict=True))
        replay_ms = _median_ms(lambda b=batch: runner.launch(b).result(), device)
        eager_ms = _median_ms(lambda b=batch: eager.launch(b).result(), device)
        lines.append(f"| {tokens} | {len(batch.pairs)} | {worst:.2e} | {replay_ms} | {eager_ms} |")
        figures[str(tokens)] = {
            "max_difference": worst,
            "replay_ms": replay_ms,
            "eager_ms": eager_ms,
        }
    report.add("Graph replays against eager passes", lines, buckets=figures)


def _no_recompiles(report: Report, runner: PackedRunner, probe: list[PassBatch]) -> None:
    import torch._dynamo.config as dynamo_config

    before = [compiled_entries(function) for function in runner.compiled_functions]
    errors: list[str] = []
    previous = dynamo_config.error_on_recompile
    dynamo_config.error_on_recompile = True
    try:
        for _ in range(2):  # one thread after the other: the runner serves from one at a time

            def serve() -> None:
                try:
                    for batch in probe:
                        runner.launch(batch).result()
                except Exception as exc:  # reported, not raised
                    errors.append(f"{type(exc).__name__}: {exc}".splitlines()[0])

            thread = threading.Thread(target=serve)
            thread.start()
            thread.join()
    finally:
        dynamo_config.error_on_recompile = previous
    after = [compiled_entries(function) for function in runner.compiled_functions]
    ok = not errors and before == after
    report.add(
        "Recompiles after prepare",
        [f"- {'none' if ok else 'FOUND'}: graphs per compiled function {before} → {after}"]
        + [f"- {error}" for error in errors],
        ok=ok, before=before, after=after, errors=errors,
    )  # fmt: skip


def _no_hidden_syncs(report: Report, model: ServedModel, runner: PackedRunner) -> None:
    results = {}
    for tokens in runner.graphed_buckets:
        batch = _filled(model, tokens - 64, seed=tokens + 1)
        torch.cuda.set_sync_debug_mode("error")
        try:
            pending = runner.launch(batch)
            results[str(tokens)] = "none"
        except RuntimeError as exc:
            results[str(tokens)] = str(exc).splitlines()[0]
            pending = None
        finally:
            torch.cuda.set_sync_debug_mode("default")
        if pending is not None:
            pending.result()
    ok = all(value == "none" for value in results.values())
    report.add(
        "Synchronisation in a graphed pass's launch",
        [f"- {'none' if ok else 'FOUND'}"]
        + [f"- {tokens}: {found}" for tokens, found in results.items() if found != "none"],
        ok=ok, buckets=results,
    )  # fmt: skip


def _pass_times(report: Report, model: ServedModel, runner: PackedRunner) -> None:
    device = torch.device(runner.description.device)
    lines = ["| bucket | graphed ms | compiled, no graph ms |", "|---:|---:|---:|"]
    figures: dict[str, Any] = {}
    for tokens in runner.options.buckets:
        batch = _filled(model, tokens - 64, seed=tokens + 2)
        lengths = [len(pair.tokens) for pair in batch.pairs]
        stream = runner.pass_tokens(PassShape(len(lengths), max(lengths), sum(lengths)))
        graphed = (
            _median_ms(lambda b=batch: runner.launch(b).result(), device)
            if stream in runner.graphed_buckets
            else None
        )
        graphs, runner._graphs = runner._graphs, {}
        try:
            plain = _median_ms(lambda b=batch: runner.launch(b).result(), device)
        finally:
            runner._graphs = graphs
        lines.append(f"| {tokens} | {graphed if graphed is not None else '–'} | {plain} |")
        figures[str(tokens)] = {"graphed_ms": graphed, "compiled_ms": plain}
    largest = max(runner.options.buckets)
    pair_tokens = min(200, largest // 2)
    pair = PassBatch([PassPair(list(range(1, pair_tokens + 1)))])
    own = runner.pass_tokens(PassShape(1, pair_tokens, pair_tokens))
    padding: dict[str, float] = {}
    if own < largest:
        padding = {
            "largest_bucket_ms": _padded_pass_ms(runner, pair, largest, device),
            "own_bucket_ms": _padded_pass_ms(runner, pair, own, device),
        }
        lines += [
            "",
            f"- padding: one {pair_tokens}-token pair in the {largest}-token bucket "
            f"{padding['largest_bucket_ms']} ms, in its own {own}-token bucket "
            f"{padding['own_bucket_ms']} ms "
            f"({padding['largest_bucket_ms'] / padding['own_bucket_ms']:.2f}×); each padding "
            "token attends only to itself",
        ]
    else:
        lines += ["", "- padding: one bucket only, nothing to compare"]
    report.add(
        "Pass time per bucket, and the padding cost", lines, buckets=figures, padding=padding
    )


def _padded_pass_ms(
    runner: PackedRunner, batch: PassBatch, length: int, device: torch.device
) -> float:
    """The pass of ``batch`` padded to ``length`` tokens, compiled, without its graph."""
    from reranker_service.engine.runner.packing import pack

    def run() -> None:
        with torch.inference_mode():
            stream = pack(batch, length, 0)
            runner._forward(runner.staging.to_device(stream), len(batch.pairs)).cpu()

    return _median_ms(run, device)


def _card_scores(
    report: Report, checkpoint: str, device: str, runners: dict[str, dict[str, ModelRunner]],
    encoder: Any, max_length: int,
) -> None:  # fmt: skip
    use_tests_support()
    from tests.support.model_card import ModelCardReranker

    card = ModelCardReranker(Path(checkpoint), max_length=max_length)
    expected = card.score_alone(None, CARD_QUERY, CARD_DOCUMENTS)
    sequences = encoder.encode(DEFAULT_INSTRUCTION, CARD_QUERY, CARD_DOCUMENTS)
    lines = ["| format | runner | max abs Δ score | bound | |", "|---|---|---:|---:|---|"]
    figures: dict[str, Any] = {}
    for dtype, by_name in runners.items():
        bound = 1e-4 if dtype == "float32" else 0.02
        for name, runner in by_name.items():
            alone = [runner.launch(PassBatch([PassPair(s)])).result()[0] for s in sequences]
            together = runner.launch(PassBatch([PassPair(s) for s in sequences])).result()
            worst = max(
                abs(probability(ours) - theirs)
                for scores in (alone, together)
                for ours, theirs in zip(scores, expected, strict=True)
            )
            verdict = "met" if worst <= bound else "MISSED"
            lines.append(f"| {dtype} | {name} | {worst:.2e} | {bound} | {verdict} |")
            figures[f"{dtype} {name}"] = {"max_difference": worst, "bound": bound}
    report.add("Scores against the model card", lines, runners=figures)


def _compile_warm(report: Report, args: argparse.Namespace, checkpoint: str, cache: Path) -> None:
    command = [
        sys.executable, __file__, "--compile-only", "--model", checkpoint, "--device",
        args.device, "--cache", str(cache), "--max-length", str(args.max_length), "--out",
        str(args.out),
    ]  # fmt: skip
    if args.max_batch_tokens:
        command += ["--max-batch-tokens", str(args.max_batch_tokens)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=max(report.left - 5, 10), check=False
    )
    figures = (
        json.loads((args.out / "compile-warm.json").read_text()) if done.returncode == 0 else {}
    )
    if not figures:
        report.add("Compile, warm cache", [f"- failed: {done.stderr.strip()[-500:]}"], failed=True)
        return
    total = figures["total_seconds"]
    judged = _judged(total, TARGETS["compile_warm_seconds"], torch.device(args.device))
    report.add(
        "Compile, warm cache (a new process)",
        [
            f"- every bucket compiled and captured: {total:.1f} s ({judged})",
            f"- compile cache: {figures['cache_hits']} graphs read, "
            f"{figures['cache_misses']} compiled",
        ],
        **figures,
    )


def _bench_cells(report: Report, checkpoint: str, args: argparse.Namespace) -> None:
    out = args.out / "bench.json"
    command = [
        sys.executable, str(ROOT / "bench" / "rerank_bench.py"), "--model", checkpoint,
        "--device", args.device, *BENCH_CELLS, "--contenders", "card", "crossencoder",
        "service", "--seconds", "3", "--json", str(out),
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=max(report.left - 5, 10), check=False
        )
    except subprocess.TimeoutExpired:
        report.skip("Bench cells", "the budget ran out during the bench")
        return
    if done.returncode != 0 or not out.exists():
        report.add("Bench cells", [f"- failed: {done.stderr.strip()[-800:]}"], failed=True)
        return
    bench = json.loads(out.read_text())
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    lines += ["", *bench["targets"]]
    report.add("Bench cells", lines, ratios=bench["ratios"], targets=bench["targets"])


def _compile_only(args: argparse.Namespace) -> None:
    """The warm start: a fresh process compiling every bucket from ``--cache``."""
    model = _load(args.model, args.device, args.dtype, args.max_length, args.max_batch_tokens,
                  args.cache)  # fmt: skip
    runner = _upgrade(model).build()
    with _timed() as seconds:
        summary = runner.compile_buckets()
        for tokens in runner.buckets_to_capture:
            runner.capture(tokens)
    figures = {
        "total_seconds": round(seconds(), 1),
        "bucket_compile_seconds": dict(summary.bucket_seconds),
        "cache_hits": summary.cache_hits,
        "cache_misses": summary.cache_misses,
    }
    (args.out / "compile-warm.json").write_text(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--budget-seconds", type=float, default=480.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--model", help="a checkpoint path; default: the 0.6B shape (random weights) on a GPU, "
        "the tiny test checkpoint on the CPU",
    )  # fmt: skip
    parser.add_argument("--dtype", default=None, help="default: auto on a GPU, float32 on a CPU")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--max-batch-tokens", type=int, default=None)
    parser.add_argument("--skip-bench", action="store_true", help="leave out the bench cells")
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    on_gpu = args.device.startswith("cuda")
    args.dtype = args.dtype or ("auto" if on_gpu else "float32")
    # The CPU's run is CI's: one small checkpoint and one 128-token bucket keep it to a minute.
    args.max_length = args.max_length or (8192 if on_gpu else 128)
    if not on_gpu and args.max_batch_tokens is None:
        args.max_batch_tokens = 128
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.compile_only:
        _compile_only(args)
        return

    report = Report(args.out, args.budget_seconds)
    steps = [
        "Machine", "Checkpoint", "Compile, cold cache", "Self-check", "Graph replays",
        "Recompiles", "Synchronisation", "Pass times", "Scores against the model card",
        "Compile, warm cache", "Bench cells",
    ]  # fmt: skip
    _stop_at_budget(report, steps)

    def step(title: str, action: Callable[[], object]) -> None:
        """Run one step; one that fails is reported as failed, and the check goes on."""
        try:
            action()
        except Exception as exc:
            reason = f"{type(exc).__name__}: {(str(exc).strip() or '-').splitlines()[0]}"
            report.add(title, [f"- FAILED: {reason}"], failed=reason)
        finally:
            steps.pop(0)

    device = torch.device(args.device if args.device != "cuda" else "cuda:0")
    step("Machine", lambda: report.add("Machine", _machine(device)))
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        with _timed() as seconds:
            if args.model:
                checkpoint = args.model
            elif on_gpu:
                checkpoint = str(build_checkpoint(scratch / "0.6b", QWEN3_RERANKER_0_6B))
            else:
                checkpoint = str(build_checkpoint(scratch / "tiny"))
        cache = scratch / "compile-cache"
        model = _load(checkpoint, args.device, args.dtype, args.max_length, args.max_batch_tokens,
                      cache)  # fmt: skip
        upgrade = _upgrade(model)
        report.add(
            "Checkpoint",
            [f"- {args.model or ('0.6B shape' if on_gpu else 'tiny test checkpoint')}, "
             f"{model.description.dtype}, built in {seconds():.1f} s; buckets "
             f"{list(upgrade.options.buckets)}, graphed up to {upgrade.options.graph_tokens}"],
            dtype=model.description.dtype, buckets=list(upgrade.options.buckets),
        )  # fmt: skip
        steps.pop(0)
        runner = upgrade.build()
        eager = _eager(upgrade)
        step("Compile, cold cache", lambda: _compile_cold(report, model, runner))
        step("Self-check", lambda: _self_check(report, runner, upgrade))
        if on_gpu:
            step("Graph replays", lambda: _replays(report, model, runner, eager))
        else:
            why = "needs CUDA (no graphs on a CPU)"
            step("Graph replays", lambda: report.skip("Graph replays against eager passes", why))
        step("Recompiles", lambda: _no_recompiles(report, runner, list(upgrade.probe)))
        if on_gpu:
            step("Synchronisation", lambda: _no_hidden_syncs(report, model, runner))
        else:
            step("Synchronisation", lambda: report.skip(
                "Synchronisation in a graphed pass's launch", "needs CUDA"))  # fmt: skip

        def card_scores() -> None:
            runners: dict[str, dict[str, ModelRunner]] = {
                model.description.dtype: {
                    "padded": model.runner, "packed, eager": eager, "packed, compiled": runner,
                }
            }  # fmt: skip
            if model.description.dtype != "float32":
                # fp32 too, uncompiled (a second cold compile would not fit the budget).
                runners["float32"] = {
                    name: _load(checkpoint, args.device, "float32", args.max_length,
                                args.max_batch_tokens, cache, "false", kind).runner
                    for name, kind in (("padded", "padded"), ("packed, eager", "packed"))
                }  # fmt: skip
            _card_scores(report, checkpoint, args.device, runners, model.encoder, args.max_length)

        step("Pass times", lambda: _pass_times(report, model, runner))
        step("Scores against the model card", card_scores)
        step("Compile, warm cache", lambda: _compile_warm(report, args, checkpoint, cache))
        if args.skip_bench or not on_gpu:
            step("Bench cells", lambda: report.skip(
                "Bench cells", "needs CUDA" if not on_gpu else "--skip-bench"))  # fmt: skip
        else:
            step("Bench cells", lambda: _bench_cells(report, checkpoint, args))
    report.write()
    print(f"== done in {report.elapsed:.0f} s: {args.out / 'gpu-check.md'}")


if __name__ == "__main__":
    main()
