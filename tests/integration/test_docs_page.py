"""``/docs`` on an air-gapped machine: Swagger UI's JavaScript and CSS come from the service
itself, so a real headless Chromium with no route anywhere but the service renders every
operation. The screenshot is kept as ``docs-page.png`` in the test's temporary folder."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import ServedModel
from tests.support.local_server import serve_in_thread
from tests.support.serving import make_settings

pytestmark = pytest.mark.slow  # serves on a real socket and starts a browser

BROWSERS = ("chromium-headless-shell", "chromium")
"""Debian's packages (.ci/run installs the first)."""


def _browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path is not None:
            return path
    pytest.fail(f"no headless Chromium ({' or '.join(BROWSERS)}): .ci/run installs it")


@pytest.fixture(scope="module")
def service(checkpoint: Path, scoring_model: ServedModel) -> Iterator[str]:
    with serve_in_thread(create_app(make_settings(checkpoint), model=scoring_model)) as url:
        yield url


def _offline_browser(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Chromium that resolves no host name and reaches nothing but 127.0.0.1: a CDN URL fails
    as it would without a network."""
    return subprocess.run(
        [
            _browser(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=127.0.0.1",
            "--virtual-time-budget=20000",
            *arguments,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_the_docs_page_renders_every_operation_offline(service: str, tmp_path: Path) -> None:
    page = f"{service}/docs"
    dom = _offline_browser("--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-2000:]
    operations = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom.stdout))
    expected = {"/rerank", "/v1/rerank", "/v2/rerank", "/score", "/health"}
    assert expected <= operations, f"operations rendered: {sorted(operations)}"
    screenshot = tmp_path / "docs-page.png"
    shot = _offline_browser(f"--screenshot={screenshot}", "--window-size=1280,1600", page)
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    assert screenshot.stat().st_size > 20_000  # a rendered page, not a blank one
