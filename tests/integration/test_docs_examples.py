"""Every curl example of the README and docs/ runs against a live server, as a reader would
paste it: a broken example (a wrong path, a field the API refuses, a header that never reaches
the server as written) fails here."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reranker_service.app import create_app
from reranker_service.engine.runner.protocol import ServedModel
from tests.support.local_server import serve_in_thread
from tests.support.paths import ROOT
from tests.support.serving import make_settings

pytestmark = pytest.mark.slow  # serves on real sockets

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
API_KEY = "docs-example-key"

# Sent where the reader's would go, with two changes only: the host is the test's server, and
# an HTTP error fails the command. A request that carries an Authorization header goes to the
# server that asks for a key; the others to one that asks for none, as in the examples.
PRELUDE = r"""
curl() {
    local server=$OPEN_SERVER argument
    for argument in "$@"; do
        [[ $argument == Authorization:* ]] && server=$KEYED_SERVER
    done
    local rewritten=()
    for argument in "$@"; do rewritten+=("${argument//localhost:8000/$server}"); done
    command curl --fail-with-body --silent --show-error --max-time 60 "${rewritten[@]}"
    echo
}
open() { curl -o /dev/null "$1"; }
"""


def _curl_blocks() -> list[tuple[str, str]]:
    """``(page:line, block)`` of each bash block made of curl (and ``open``) commands only."""
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for match in re.finditer(r"```bash\n(.*?)```", text, flags=re.DOTALL):
            block = match.group(1)
            commands = _command_lines(block)
            if commands and all(re.match(r"(curl|open) ", command) for command in commands):
                line = text[: match.start()].count("\n") + 2
                blocks.append((f"{page.relative_to(ROOT)}:{line}", block))
    return blocks


def _command_lines(block: str) -> list[str]:
    """The first line of each command: not a comment, a continuation or JSON inside quotes."""
    starts, quoted = [], False
    for line in block.replace("\\\n", " ").splitlines():
        stripped = line.strip()
        if not quoted and stripped and not stripped.startswith("#"):
            starts.append(stripped)
        quoted ^= line.count("'") % 2 == 1
    return starts


BLOCKS = _curl_blocks()


@pytest.fixture(scope="module")
def servers(checkpoint: Path, scoring_model: ServedModel) -> Iterator[tuple[str, str]]:
    """``host:port`` of a server that asks for no key, and of one that asks for ``API_KEY``."""
    with (
        serve_in_thread(create_app(make_settings(checkpoint), model=scoring_model)) as open_url,
        serve_in_thread(
            create_app(make_settings(checkpoint, api_key=API_KEY), model=scoring_model)
        ) as keyed_url,
    ):
        yield open_url.removeprefix("http://"), keyed_url.removeprefix("http://")


def test_the_examples_are_found() -> None:
    assert {where.split(":")[0] for where, _ in BLOCKS} >= {"README.md", "docs/api.md"}
    assert sum(block.count("curl ") for _, block in BLOCKS) >= 9


@pytest.mark.parametrize(("where", "block"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_a_curl_example_works_as_written(where: str, block: str, servers: tuple[str, str]) -> None:
    open_server, keyed_server = servers
    completed = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", PRELUDE + block],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            "PATH": "/usr/bin:/bin",
            "OPEN_SERVER": open_server,
            "KEYED_SERVER": keyed_server,
            "RERANKER_API_KEY": API_KEY,
        },
        check=False,
    )
    assert completed.returncode == 0, f"{where}:\n{completed.stdout}\n{completed.stderr}"
