"""The README is what users read first; it must not drift from the code."""

from __future__ import annotations

import re
from pathlib import Path

from reranker_service.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_setting_is_in_the_readme_table() -> None:
    text = README.read_text()
    for name in Settings.model_fields:
        assert f"`RERANKER_{name.upper()}`" in text, f"RERANKER_{name.upper()} missing from README"


def test_readme_starts_with_the_serve_and_test_commands() -> None:
    blocks = re.findall(r"<!-- (serve|test) command -->\n```bash\n(.+?)\n```", README.read_text())
    assert [kind for kind, _ in blocks] == ["serve", "test"]
    serve, test = (command for _, command in blocks)
    assert serve.endswith("reranker-service")
    assert "torch==2.13.0" in test
    assert test.endswith("python -m pytest")
