"""One batch run: input lines in, answer lines out, in order, resumable."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from reranker_service.offline.batch_lines import Answer, BatchLine, LineKey, parse_line
from reranker_service.offline.in_order import PairBudget, Send, Window, answer_in_order
from reranker_service.offline.progress import Progress

_COUNT_CHUNK_BYTES = 1 << 20


@dataclass
class BatchSummary:
    """What a run did, for its last lines and its exit code."""

    lines_read: int = 0
    skipped: int = 0
    """Answered by an earlier run of the same output."""
    answered: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Failed lines by error type."""
    pairs: int = 0
    """Pairs in the lines answered now (documents asked for, whatever their outcome)."""
    seconds: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def pairs_per_second(self) -> float:
        return self.pairs / self.seconds if self.seconds > 0 else 0.0

    def note(self, answer: Answer) -> None:
        self.answered += 1
        self.pairs += answer.line.pairs
        if answer.error is not None:
            self.failures[str(answer.error.get("type", "unknown"))] += 1


def count_lines(path: Path) -> int | None:
    """Lines in ``path`` (a last one without a newline too), for the ETA; None for what is not
    a regular file (a pipe can be read once only)."""
    if not path.is_file():
        return None
    lines = 0
    last = b"\n"
    with path.open("rb") as source:
        while chunk := source.read(_COUNT_CHUNK_BYTES):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


def lines_to_send(
    source: IO[bytes],
    default_route: str,
    answered: Counter[LineKey],
    summary: BatchSummary,
) -> Iterator[BatchLine]:
    """The input's lines, less blank ones and those ``answered`` already (each occurrence of
    a key answered once; the counter is emptied as they are met)."""
    for number, raw in enumerate(source, start=1):
        if not raw.strip():
            continue
        summary.lines_read += 1
        line = parse_line(number, raw.rstrip(b"\r\n"), default_route)
        if answered[line.key] > 0:
            answered[line.key] -= 1
            summary.skipped += 1
            continue
        answered.pop(line.key, None)
        yield line


async def run_batch(
    source: IO[bytes],
    output: IO[bytes],
    send: Send,
    *,
    default_route: str,
    answered: Counter[LineKey],
    window: Window,
    budget: PairBudget,
    progress: Progress,
    stop: asyncio.Event,
    summary: BatchSummary,
) -> None:
    """Answer every line of ``source`` not ``answered`` yet, appending each answer line to
    ``output`` in input order, flushed as written: a run killed at any point leaves whole lines
    (and perhaps one half-written last line, which the next run cuts) for it to resume from.
    ``summary`` is filled in as lines are written, so it holds the truth when the run is
    cancelled too."""
    lines = lines_to_send(source, default_route, answered, summary)
    answers = answer_in_order(lines, send, window=window, budget=budget, stop=stop)
    async with contextlib.aclosing(answers):
        async for answer in answers:
            output.write(answer.output_line())
            output.flush()
            summary.note(answer)
            progress.advance(pairs=answer.line.pairs, failed=answer.failed)
