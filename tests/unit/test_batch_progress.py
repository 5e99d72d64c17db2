"""How a batch run shows its progress: a bar on a terminal, log lines elsewhere."""

from __future__ import annotations

import io

from structlog.testing import capture_logs

from reranker_service.offline.progress import BarProgress, LogProgress, progress_for


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_come_every_interval_with_rate_and_time_left() -> None:
    clock = _Clock()
    progress = LogProgress(total_lines=100, interval_seconds=30, clock=clock)
    with capture_logs() as logs:
        for _ in range(10):
            clock.now += 2
            progress.advance(pairs=5, failed=False)
        clock.now += 15  # 35 s in: the first line is due
        progress.advance(pairs=5, failed=True)
        clock.now += 1
        progress.advance(pairs=5, failed=False)

    [line] = logs
    assert line["event"] == "batch_progress"
    assert line["lines_done"] == 11
    assert line["failed"] == 1
    assert line["pairs_per_second"] == round(55 / 35, 1)
    assert line["eta_seconds"] == round(89 * 35 / 11)
    assert line["peak_rss_bytes"] > 0


def test_a_terminal_gets_a_bar_on_its_stream_and_anything_else_log_lines() -> None:
    terminal = _Terminal()

    bar = progress_for(terminal, 4, interval_seconds=30)
    for _ in range(4):
        bar.advance(pairs=3, failed=False)
    bar.close()

    assert isinstance(bar, BarProgress)
    assert "4/4" in terminal.getvalue()
    assert isinstance(progress_for(io.StringIO(), 4, interval_seconds=30), LogProgress)
