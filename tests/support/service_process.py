"""``python -m reranker_service`` as a child process whose stdout is read as JSON lines.

Both pipes are read as they fill, each on a thread of its own: a child that writes more to one
than a pipe holds (64 KiB on Linux) would otherwise block in that write, and hang the test that
waits for its next line. What it wrote to stderr is kept, and its tail goes into the message of
a wait that fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from queue import Empty, Queue
from typing import Any

LINE_TIMEOUT_S = 60
STDERR_TAIL_LINES = 20
STDERR_JOIN_S = 5
"""How long a failed wait waits for the rest of stderr (a grandchild may hold the pipe)."""

_STDOUT_CLOSED: dict[str, Any] = {"event": None, "stdout_closed": True}
"""Put on ``lines`` when the child closes its stdout (it exited): no line comes after it."""


class ServiceProcess:
    """A command that serves (``python -m reranker_service``, or the image's entry point) with
    stdout parsed as JSON lines on a reader thread."""

    def __init__(self, command: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.lines: Queue[dict[str, Any]] = Queue()
        self.raw_lines: list[str] = []
        self.stderr_lines: list[str] = []
        """What it wrote to stderr (read as it comes, so that a chatty child never blocks on
        a full pipe)."""
        self.proc = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_reader.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw_lines.append(line)
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put({"event": None, "unparsable_line": line})
        self.lines.put(_STDOUT_CLOSED)

    def _next_line(self, waiting_for: str, timeout_s: float) -> dict[str, Any]:
        """The next stdout record; an ``AssertionError`` naming ``waiting_for``, with the end of
        stderr, when none comes within ``timeout_s`` or the child has exited."""
        try:
            record = self.lines.get(timeout=timeout_s)
        except Empty:
            raise AssertionError(
                f"no {waiting_for} within {timeout_s:.0f} s{self._stderr_tail()}"
            ) from None
        if record is _STDOUT_CLOSED:
            self.lines.put(record)  # a later wait fails at once too
            try:
                exit_code: int | None = self.proc.wait(timeout=STDERR_JOIN_S)
            except subprocess.TimeoutExpired:
                exit_code = None
            self._stderr_reader.join(timeout=STDERR_JOIN_S)  # its last lines, for the message
            raise AssertionError(
                f"the process closed its stdout (exit code {exit_code}) before {waiting_for}"
                f"{self._stderr_tail()}"
            )
        return record

    def _stderr_tail(self) -> str:
        tail = "".join(self.stderr_lines[-STDERR_TAIL_LINES:]).rstrip()
        return f"; its stderr ends:\n{tail}" if tail else "; nothing on its stderr"

    def wait_for(
        self, event: str, *, timeout_s: float = LINE_TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """The next record of ``event`` with ``fields``; the records before it are passed
        over. Each line may take ``timeout_s``."""
        while True:
            record = self._next_line(f"{event!r} log line", timeout_s)
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record

    def base_url(self, line_timeout: float = LINE_TIMEOUT_S) -> str:
        """Read lines up to uvicorn's 'running on' line; the port was chosen by the OS. A start
        that compiles before it listens is silent for longer than ``LINE_TIMEOUT_S``."""
        while True:
            record = self._next_line("'running on' line", line_timeout)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", record.get("event") or "")
            if match:
                return match.group(1)

    def finish(self, timeout_s: float = 60) -> list[dict[str, Any]]:
        """Wait for the process to exit on its own and for both pipes to be read to their end;
        every stdout line, parsed."""
        self.proc.wait(timeout=timeout_s)
        self._join_readers()
        return [json.loads(line) for line in self.raw_lines]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._join_readers()

    def _join_readers(self) -> None:
        for reader in (self._reader, self._stderr_reader):
            reader.join(timeout=30)


def start_service(
    checkpoint: Path,
    *args: str,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = (),
    module: str = "reranker_service",
) -> ServiceProcess:
    """The service on the test checkpoint, CPU in fp32, an ephemeral 127.0.0.1 port, debug
    logs; ``args`` come after and may override. ``launcher`` is put before the command: a
    wrapper that execs it (same process). ``module`` is the one ``python -m`` runs: the
    service's own, or a test's entry point that wraps it."""
    base = (
        *("--model", str(checkpoint), "--host", "127.0.0.1", "--port", "0"),
        *("--device", "cpu", "--dtype", "float32"),
    )
    command = [*launcher, sys.executable, "-m", module, *base, "--log-level", "debug"]
    return ServiceProcess([*command, *args], env=env)
