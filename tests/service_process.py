"""``python -m reranker_service`` as a child process whose stdout is read as JSON lines."""

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

    def wait_for(self, event: str, **fields: Any) -> dict[str, Any]:
        while True:
            try:
                record = self.lines.get(timeout=LINE_TIMEOUT_S)
            except Empty:
                raise AssertionError(f"no {event!r} log line within {LINE_TIMEOUT_S}s") from None
            if record.get("event") == event and all(record.get(k) == v for k, v in fields.items()):
                return record

    def base_url(self, line_timeout: float = LINE_TIMEOUT_S) -> str:
        """Read lines up to uvicorn's 'running on' line; the port was chosen by the OS. A start
        that compiles before it listens is silent for longer than ``LINE_TIMEOUT_S``."""
        while True:
            record = self.lines.get(timeout=line_timeout)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", record.get("event", ""))
            if match:
                return match.group(1)

    def finish(self) -> list[dict[str, Any]]:
        """Wait for the process to exit on its own; every stdout line, parsed."""
        self.proc.wait(timeout=60)
        self._reader.join(timeout=30)
        return [json.loads(line) for line in self.raw_lines]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)


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
