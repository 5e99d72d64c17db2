"""``reranker-service batch IN.jsonl OUT.jsonl``: a JSONL file of rerank requests scored at full
throughput, in process or against a running service, resumable."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from reranker_service.app import StartupError
from reranker_service.cli import (
    SettingsError,
    add_settings_arguments,
    positive_int,
    settings_flags,
    settings_from,
)
from reranker_service.engine.scoring import ModelLoadError
from reranker_service.observability.logging import configure_logging
from reranker_service.offline import event_loop
from reranker_service.offline.answered import OutputFileError, answered_keys
from reranker_service.offline.batch_lines import ROUTES, LineKey
from reranker_service.offline.batch_run import BatchSummary, count_lines, run_batch
from reranker_service.offline.clients import in_process, queue_capacity, remote
from reranker_service.offline.in_order import PairBudget, Window
from reranker_service.offline.line_sender import LineSender, RetryPolicy
from reranker_service.offline.posting import Poster
from reranker_service.offline.progress import peak_rss_bytes, progress_for
from reranker_service.settings import Settings

logger = structlog.get_logger(__name__)

API_KEY_VARIABLE = "RERANKER_API_KEY"
"""Sent as ``Authorization: Bearer`` when set: the variable the service itself reads."""
DEFAULT_CONCURRENCY = 32
"""Lines in flight unless told: enough queued for the engine to fill its passes from."""
EXIT_FAILED_LINES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class BatchOptions:
    input: Path
    output: Path
    url: str | None
    route: str
    concurrency: int
    pairs_in_flight: int | None
    retry: RetryPolicy
    client_timeout_seconds: float
    allow_errors: bool
    overwrite: bool
    progress_seconds: float


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reranker-service batch",
        description=(
            "Score a JSONL file of rerank requests, one per line: a body of the route's "
            "shape with an optional custom_id, or an OpenAI-batch line {custom_id, method, url, "
            "body}. Writes one answer line per input line, in input order. Rerun with the same "
            "output to resume: lines already answered are skipped. Without --url the model is "
            "loaded here, configured by the same flags and RERANKER_* variables as the server."
        ),
    )
    parser.add_argument("input", type=Path, help="JSONL requests")
    parser.add_argument("output", type=Path, help="JSONL answers (appended to when resuming)")
    parser.add_argument(
        "--url", help="score with the service at this base URL (a replica or a load balancer)"
    )
    parser.add_argument(
        "--route",
        choices=sorted(ROUTES),
        default="/rerank",
        help="the route of lines that are bodies, not envelopes [default /rerank]",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"lines in flight at once [default {DEFAULT_CONCURRENCY}]",
    )
    parser.add_argument(
        "--pairs-in-flight",
        type=positive_int,
        help="pairs in flight at once [default: what the service's queue holds, from /info]",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=RetryPolicy.max_retries,
        help="tries after a 429, a 503 or an unreachable service before a line fails "
        f"[default {RetryPolicy.max_retries}]",
    )
    parser.add_argument(
        "--client-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for one answer with --url [default 600]",
    )
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="exit 0 even when some lines failed (they are still written as error lines)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start over instead of resuming an output"
    )
    parser.add_argument(
        "--progress-seconds",
        type=float,
        default=30.0,
        help="seconds between progress log lines when stderr is not a terminal [default 30]",
    )
    settings = parser.add_argument_group(
        "model settings (in process, without --url; as the server's, env RERANKER_*)"
    )
    add_settings_arguments(settings)
    return parser


def _options(arguments: argparse.Namespace) -> BatchOptions:
    return BatchOptions(
        input=arguments.input,
        output=arguments.output,
        url=arguments.url,
        route=arguments.route,
        concurrency=arguments.concurrency,
        pairs_in_flight=arguments.pairs_in_flight,
        retry=RetryPolicy(max_retries=max(0, arguments.max_retries)),
        client_timeout_seconds=arguments.client_timeout,
        allow_errors=arguments.allow_errors,
        overwrite=arguments.overwrite,
        progress_seconds=arguments.progress_seconds,
    )


@contextlib.asynccontextmanager
async def open_poster(
    url: str | None, settings: Settings, *, timeout_seconds: float, connections: int
) -> AsyncIterator[Poster]:
    """The service at ``url``, or the app loaded here."""
    if url is not None:
        async with remote(url, timeout_seconds=timeout_seconds, connections=connections) as poster:
            yield poster
    else:
        async with in_process(settings) as poster:
            yield poster


def bearer_headers(environ: Mapping[str, str]) -> dict[str, str]:
    key = environ.get(API_KEY_VARIABLE)
    return {"Authorization": f"Bearer {key}"} if key else {}


class Interrupts:
    """Ctrl-C (or SIGTERM) once: send no new line, finish and write those in flight. Twice:
    stop now, with every line finished so far written."""

    def __init__(self, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        self._stop = stop
        self._task = task
        self.count = 0

    def __call__(self) -> None:
        self.count += 1
        if self.count == 1:
            self._stop.set()
            logger.warning(
                "batch_stopping", hint="finishing the lines in flight; again to stop now"
            )
        else:
            self._task.cancel()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        handled = (signal.SIGINT, signal.SIGTERM)
        for sig in handled:
            loop.add_signal_handler(sig, self)
        try:
            yield
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)


async def _run(options: BatchOptions, settings: Settings, summary: BatchSummary) -> None:
    answered: Counter[LineKey] = Counter() if options.overwrite else answered_keys(options.output)
    total = count_lines(options.input)
    stop = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None
    interrupts = Interrupts(stop, task)
    with interrupts.installed():
        async with open_poster(
            options.url,
            settings,
            timeout_seconds=options.client_timeout_seconds,
            connections=options.concurrency,
        ) as poster:
            capacity = options.pairs_in_flight or await queue_capacity(poster)
            window = Window(options.concurrency)
            sender = LineSender(
                poster, options.retry, headers=bearer_headers(os.environ), window=window
            )
            progress = progress_for(
                sys.stderr,
                None if total is None else max(0, total - sum(answered.values())),
                options.progress_seconds,
            )
            started = time.monotonic()
            try:
                with (
                    options.input.open("rb") as source,
                    options.output.open("wb" if options.overwrite else "ab") as output,
                ):
                    await run_batch(
                        source,
                        output,
                        sender.send,
                        default_route=options.route,
                        answered=answered,
                        window=window,
                        budget=PairBudget(capacity),
                        progress=progress,
                        stop=stop,
                        summary=summary,
                    )
            except asyncio.CancelledError:
                if interrupts.count < 2:
                    raise
            finally:
                progress.close()
                summary.seconds = time.monotonic() - started
                summary.interrupted = interrupts.count > 0


def _report(summary: BatchSummary, output: Path) -> None:
    failures = ", ".join(f"{kind} {count}" for kind, count in summary.failures.most_common())
    print(
        f"batch: {summary.answered} lines answered ({summary.answered - summary.failed} ok, "
        f"{summary.failed} failed{': ' + failures if failures else ''}), "
        f"{summary.skipped} answered by an earlier run; {summary.pairs} pairs in "
        f"{summary.seconds:.1f} s ({summary.pairs_per_second:,.1f} pairs/s) -> {output}"
        + (" [interrupted: rerun the same command to resume]" if summary.interrupted else ""),
        file=sys.stderr,
    )
    logger.info(
        "batch_finished",
        lines_read=summary.lines_read,
        answered=summary.answered,
        skipped=summary.skipped,
        failed=summary.failed,
        failures=dict(summary.failures),
        pairs=summary.pairs,
        seconds=round(summary.seconds, 3),
        pairs_per_second=round(summary.pairs_per_second, 3),
        interrupted=summary.interrupted,
        output=str(output),
        peak_rss_bytes=peak_rss_bytes(),
    )


def main(argv: Sequence[str]) -> int:
    arguments = build_parser().parse_args(argv)
    options = _options(arguments)
    try:
        settings = settings_from(settings_flags(arguments))
    except SettingsError as exc:
        print(f"reranker-service batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    if not options.input.is_file():
        print(f"reranker-service batch: no such input file: {options.input}", file=sys.stderr)
        return EXIT_USAGE
    summary = BatchSummary()
    try:
        event_loop.run(_run(options, settings, summary))
    except OutputFileError as exc:
        print(f"reranker-service batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModelLoadError as exc:
        logger.error("model_load_failed", model=settings.model, error=str(exc))
        return 1
    except StartupError as exc:  # logged by the app's start-up
        print(f"reranker-service batch: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        summary.interrupted = True  # before the first line: nothing was written
    _report(summary, options.output)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.failed and not options.allow_errors:
        return EXIT_FAILED_LINES
    return 0
