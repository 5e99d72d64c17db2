"""How far a batch run is: a bar on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

import structlog
from tqdm import tqdm

logger = structlog.get_logger(__name__)


def peak_rss_bytes() -> int:
    """The most memory this process has held (Linux counts ``ru_maxrss`` in KiB): a run of a
    million lines must hold no more than one of a thousand."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Progress(Protocol):
    def advance(self, *, pairs: int, failed: bool) -> None:
        """One more line answered."""

    def close(self) -> None: ...


class Rate:
    """Lines and pairs done since the start, and what they say of the time left."""

    def __init__(self, total_lines: int | None, clock: Callable[[], float]) -> None:
        self.total_lines = total_lines
        self._clock = clock
        self._started = clock()
        self.lines = 0
        self.pairs = 0
        self.failed = 0

    def count(self, pairs: int, failed: bool) -> None:
        self.lines += 1
        self.pairs += pairs
        self.failed += failed

    @property
    def seconds(self) -> float:
        return self._clock() - self._started

    @property
    def pairs_per_second(self) -> float:
        seconds = self.seconds
        return self.pairs / seconds if seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total_lines is None or self.lines == 0:
            return None
        return max(0, self.total_lines - self.lines) * self.seconds / self.lines


class BarProgress:
    """tqdm's bar on stderr: lines, their rate and ETA, with pairs/s and failures beside."""

    def __init__(self, total_lines: int | None, stream: TextIO = sys.stderr) -> None:
        self._rate = Rate(total_lines, time.monotonic)
        self._bar = tqdm(total=total_lines, unit="line", file=stream, dynamic_ncols=True)
        self._shown_at = 0.0

    def advance(self, *, pairs: int, failed: bool) -> None:
        self._rate.count(pairs, failed)
        now = time.monotonic()
        if now - self._shown_at >= 0.5:  # the figures change slower than lines arrive
            self._bar.set_postfix(
                pairs_s=f"{self._rate.pairs_per_second:,.0f}",
                failed=self._rate.failed,
                refresh=False,
            )
            self._shown_at = now
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


class LogProgress:
    """A ``batch_progress`` log line every ``interval_seconds``, for a run whose stderr is a
    file or a pipe (a container, a scheduler)."""

    def __init__(
        self,
        total_lines: int | None,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = Rate(total_lines, clock)
        self._interval = interval_seconds
        self._clock = clock
        self._logged_at = clock()

    def advance(self, *, pairs: int, failed: bool) -> None:
        self._rate.count(pairs, failed)
        if self._clock() - self._logged_at >= self._interval:
            self._log()

    def _log(self) -> None:
        rate = self._rate
        eta = rate.eta_seconds
        logger.info(
            "batch_progress",
            lines_done=rate.lines,
            lines_total=rate.total_lines,
            failed=rate.failed,
            pairs_per_second=round(rate.pairs_per_second, 1),
            eta_seconds=None if eta is None else round(eta),
            peak_rss_bytes=peak_rss_bytes(),
        )
        self._logged_at = self._clock()

    def close(self) -> None:
        pass


def progress_for(
    stream: TextIO, total_lines: int | None, interval_seconds: float
) -> BarProgress | LogProgress:
    """A bar when ``stream`` is a terminal, log lines otherwise."""
    if stream.isatty():
        return BarProgress(total_lines, stream)
    return LogProgress(total_lines, interval_seconds)
