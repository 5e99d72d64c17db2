"""``reranker-service batch`` in process against the same command driving the service over HTTP
at its best concurrency, on the same JSONL file (issue 36's target: in process >= 1.0x).

    python bench/batch_bench.py --shape qwen3-reranker-0.6b --lines 60 \\
        --markdown bench/results/cpu-batch-0.6b.md

A random-weight Qwen3 reranker of ``--shape`` (``tiny``: the batch machinery's own cost;
``qwen3-reranker-0.6b``: the real model's arithmetic) is built once into ``--checkpoint-dir``.
The file: ``--lines`` distinct rerank requests, each a query of 8-12 words and 10-20 documents
of 30-80 words (``workloads.make_word_requests``, fixed seed), so nothing repeats and, with the
score cache off in both, every pair is computed.

In each of ``--rounds`` rounds, in an order that turns each round:
- in process: ``python -m reranker_service batch IN OUT`` with the model flags, at each
  ``--in-process-concurrency`` (the first is the command's default);
- the service: ``python -m reranker_service`` started afresh for each run (both contenders
  start cold: a service kept warm across runs would answer from kernels a fresh process has yet
  to build), beside it ``python -m reranker_service batch IN OUT --url ...`` at each
  ``--concurrency``.
Each figure is the pairs/s of the command's own ``batch_finished`` line: the pairs over the time
from the first line sent to the last line written, model loading left out. The ratios are the
median in-process figure (at the default, and at its best concurrency) over the median of the
service at its best concurrency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reranker_service.offline.batch_command import DEFAULT_CONCURRENCY
from reranker_service.tiny_checkpoint import build_kind
from workloads import WordWorkload, make_word_requests

LINES = WordWorkload("batch-lines", (8, 12), (10, 20), (30, 80), "10-20 docs of 30-80 words")
VOCABULARY = (
    "an", "at", "city", "day", "document", "for", "it", "no", "on", "one", "or", "page",
    "passage", "query", "retrieve", "small", "sun", "the", "to", "true", "us", "we", "you",
    "river", "light", "water", "school", "music", "market", "energy",
)  # fmt: skip


def write_file(path: Path, lines: int, seed: int) -> int:
    """The requests, one a line; the pairs they hold."""
    requests = make_word_requests(LINES, VOCABULARY, lines, seed)
    with path.open("w") as out:
        for number, request in enumerate(requests):
            body = {
                "custom_id": f"r{number}",
                "query": request.query,
                "documents": request.documents,
            }
            out.write(json.dumps(body) + "\n")
    return sum(len(request.documents) for request in requests)


def _batch(arguments: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run the batch command; its ``batch_finished`` line."""
    completed = subprocess.run(
        [sys.executable, "-m", "reranker_service", "batch", *arguments, "--overwrite"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RERANKER_LOG_LEVEL": "info"},
        check=False,
    )
    for line in completed.stdout.splitlines():
        if '"batch_finished"' in line:
            finished: dict[str, Any] = json.loads(line)
            if completed.returncode != 0 or finished["failed"]:
                raise RuntimeError(f"batch failed: {finished}")
            return finished
    raise RuntimeError(f"batch wrote no summary:\n{completed.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service:
    """The service in its own process, as ``docker compose up`` runs it."""

    def __init__(self, model_flags: Sequence[str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "reranker_service", *model_flags,
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning",
             "--max-queued-pairs", "1000000", "--request-timeout-seconds", "0"],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 600
        while True:
            if self._process.poll() is not None:
                raise RuntimeError("the service exited during start-up")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=5) as ready:
                    if ready.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.5)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=60)


def _measured_run(
    where: str, concurrency: int, files: list[str], model_flags: list[str], timeout: float
) -> dict[str, Any]:
    """One run from a cold process, as the in-process command always starts: a service kept
    across runs would serve later runs from warm caches (oneDNN's kernels for each batch shape
    among them) that a fresh in-process run builds as it goes."""
    if where == "in process":
        return _batch([*files, *model_flags, "--concurrency", str(concurrency)], timeout=timeout)
    service = Service(model_flags)
    try:
        return _batch(
            [*files, "--url", service.url, "--concurrency", str(concurrency)], timeout=timeout
        )
    finally:
        service.stop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="tiny", choices=["tiny", "qwen3-reranker-0.6b"])
    parser.add_argument(
        "--checkpoint-dir", type=Path, help="where the checkpoint is built once and reused"
    )
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=int, nargs="+", default=[8, 32, 128], help="of the service's client"
    )
    parser.add_argument(
        "--in-process-concurrency", type=int, nargs="+", default=[DEFAULT_CONCURRENCY],
        help="of the in-process runs; the first should be the command's default",
    )  # fmt: skip
    parser.add_argument("--dtype", default="auto", help="RERANKER_DTYPE of both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per command")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--markdown", type=Path, help="also write the report here")
    return parser


def _checkpoint(folder: Path, shape: str) -> Path:
    target = folder / f"qwen3-{shape}"
    if not (target / "config.json").is_file():
        build_kind(target, "qwen3", shape=shape)
    return target


def main() -> None:
    args = build_parser().parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        checkpoint = _checkpoint(args.checkpoint_dir or work, args.shape)
        requests, answers = work / "requests.jsonl", work / "answers.jsonl"
        pairs = write_file(requests, args.lines, args.seed)
        model_flags = ["--model", str(checkpoint), "--device", "cpu", "--dtype", args.dtype,
                       "--cache-size", "0"]  # fmt: skip
        files = [str(requests), str(answers)]
        in_process: dict[int, list[float]] = {c: [] for c in args.in_process_concurrency}
        served: dict[int, list[float]] = {c: [] for c in args.concurrency}
        print(f"{args.lines} lines, {pairs} pairs, shape {args.shape}", flush=True)
        load_before = os.getloadavg()
        contenders = [("in process", c) for c in args.in_process_concurrency] + [
            ("service", c) for c in args.concurrency
        ]
        for round_number in range(args.rounds):
            # The order turns each round: no contender always runs first, or after another.
            turn = round_number % len(contenders)
            for where, concurrency in contenders[turn:] + contenders[:turn]:
                finished = _measured_run(where, concurrency, files, model_flags, args.timeout)
                figures = in_process if where == "in process" else served
                figure = finished["pairs"] / finished["seconds"]
                figures[concurrency].append(figure)
                print(f"round {round_number}: {where} at {concurrency}: {figure:.3g} pairs/s")
    medians = {c: statistics.median(figures) for c, figures in served.items()}
    best = max(medians, key=lambda c: medians[c])
    own = {c: statistics.median(figures) for c, figures in in_process.items()}
    default = args.in_process_concurrency[0]
    own_best = max(own, key=lambda c: own[c])
    context = {
        "command": " ".join(["python", *sys.argv]),
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
        "shape": args.shape,
        "dtype": args.dtype,
        "lines": args.lines,
        "pairs": pairs,
        "rounds": args.rounds,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    lines = [
        f"# batch in process against the service over HTTP ({args.shape}, dtype {args.dtype})",
        "",
        f"`{context['command']}`: {context['machine']}, {args.lines} lines, {pairs} pairs, "
        f"{args.rounds} rounds, load {context['load_before']} -> {context['load_after']}.",
        "",
        "| contender | pairs/s by round | median |",
        "|---|---|---|",
        *(
            f"| batch, in process, concurrency {c}{' (default)' if c == default else ''} | "
            f"{', '.join(f'{x:.3g}' for x in in_process[c])} | {own[c]:.3g} |"
            for c in args.in_process_concurrency
        ),
        *(
            f"| batch --url, concurrency {c}{' (best)' if c == best else ''} | "
            f"{', '.join(f'{x:.3g}' for x in served[c])} | {medians[c]:.3g} |"
            for c in args.concurrency
        ),
        "",
        f"**in process at its default concurrency ({default}) / the service at its best "
        f"({best}): {own[default] / medians[best]:.2f}x**; in process at its best "
        f"({own_best}): {own[own_best] / medians[best]:.2f}x (target >= 1.0)",
    ]
    print("\n" + "\n".join(lines))
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        ratios = {"default": own[default] / medians[best], "best": own[own_best] / medians[best]}
        record = {**context, "in_process": in_process, "service": served, "ratios": ratios}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
