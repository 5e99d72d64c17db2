"""The test harness's child process: a child that writes more to stderr than a pipe holds is not
held up by it, and a child that exits before the line a test waits for fails the wait at once,
with the end of its stderr."""

from __future__ import annotations

import sys

import pytest

from tests.support.service_process import ServiceProcess

PIPE_CAPACITY = 64 * 1024
"""A Linux pipe's default buffer: a writer past it blocks until the other end reads."""
STDERR_BYTES = 4 * PIPE_CAPACITY
HANG_TIMEOUT_S = 30
"""Only a failing run waits this long: the child writes its stderr and its line in well under a
second, unless its write blocks."""


def _child(code: str) -> ServiceProcess:
    return ServiceProcess([sys.executable, "-c", code])


def test_a_child_writing_more_than_a_pipe_holds_to_stderr_does_not_hang() -> None:
    child = _child(
        "import json, sys\n"
        f"for _ in range({STDERR_BYTES // 64}):\n"
        "    sys.stderr.write('x' * 63 + '\\n')\n"
        "sys.stderr.flush()\n"
        "print(json.dumps({'event': 'written'}), flush=True)\n"
    )
    try:
        child.wait_for("written", timeout_s=HANG_TIMEOUT_S)
        child.finish(timeout_s=HANG_TIMEOUT_S)
    finally:
        child.stop()
    assert sum(len(line) for line in child.stderr_lines) == STDERR_BYTES


def test_a_child_that_exits_fails_the_wait_at_once_with_its_stderr() -> None:
    child = _child("import sys; sys.stderr.write('the model would not load\\n'); sys.exit(3)")
    try:
        # Were the exit not noticed, this would wait for the line until it timed out.
        with pytest.raises(AssertionError, match="closed its stdout") as failed:
            child.wait_for("service_ready", timeout_s=HANG_TIMEOUT_S)
        with pytest.raises(AssertionError, match="closed its stdout"):
            child.base_url(line_timeout=HANG_TIMEOUT_S)
    finally:
        child.stop()
    assert "exit code 3" in str(failed.value)
    assert "the model would not load" in str(failed.value)
