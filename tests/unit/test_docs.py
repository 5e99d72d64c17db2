"""The README and docs/ are what users read first; they must not drift from the code."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from reranker_service.cli import build_parser
from reranker_service.offline.batch_command import build_parser as build_batch_parser
from reranker_service.offline.eval_command import build_parser as build_eval_parser
from reranker_service.settings import Settings
from tests.support.paths import ROOT

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
VENV_BIN = Path(sys.executable).parent


def _bash_lines() -> list[str]:
    """Every command line of every bash block of the README and docs/, comments removed."""
    lines = []
    for page in [README, *DOCS]:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL):
            for line in block.replace("\\\n", " ").splitlines():
                command = line.split(" # ")[0].strip()
                if command and not command.startswith("#"):
                    lines.append(command)
    return lines


def test_every_setting_is_in_the_configuration_page() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        variable = f"RERANKER_{name.upper()}"
        assert f"`{variable}`" in text, f"{variable} missing from docs/configuration.md"


def test_readme_starts_with_the_serve_and_test_commands() -> None:
    blocks = re.findall(r"<!-- (serve|test) command -->\n```bash\n(.+?)\n```", README.read_text())
    assert [kind for kind, _ in blocks] == ["serve", "test"]
    serve, test = (command for _, command in blocks)
    assert serve.endswith("reranker-service")
    assert "torch==2.13.0" in test
    # The serve install is as pinned as the tests': the same torch, every other version from
    # constraints.txt, never whatever PyPI has newest.
    assert ".venv/bin/pip install -c constraints.txt torch==2.13.0 -e . &&" in serve
    for check in ("ruff check .", "ruff format --check .", "mypy", "lint-imports"):
        assert f".venv/bin/{check} &&" in test
    assert test.endswith("python -m pytest")


def test_readme_is_a_short_page_that_links_every_doc() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", text))
    assert linked == {f"docs/{page.name}" for page in DOCS}


def test_documented_programs_and_files_exist() -> None:
    for line in _bash_lines():
        for program in re.findall(r"\.venv/bin/([\w-]+)", line):
            assert (VENV_BIN / program).exists(), f"{line!r}: no {program} in the venv"
        for path in re.findall(r"(?<![\w/.])((?:bench|tools|deploy)/[\w./-]+)", line):
            assert (ROOT / path).exists(), f"{line!r}: no {path}"
        for path in re.findall(r"-f (\S+\.ya?ml)", line):
            assert (ROOT / path).exists(), f"{line!r}: no {path}"


_SUBCOMMANDS = {"batch": build_batch_parser, "eval": build_eval_parser}


def _service_flags(words: list[str]) -> set[str]:
    """The flags of the command ``words`` runs: the server's, or a subcommand's."""
    at = next(index for index, word in enumerate(words) if word.endswith("bin/reranker-service"))
    subcommand = words[at + 1] if at + 1 < len(words) else ""
    parser = _SUBCOMMANDS.get(subcommand, build_parser)()
    return set(parser._option_string_actions)


def test_documented_flags_exist() -> None:
    script_help: dict[str, str] = {}
    for line in _bash_lines():
        if not re.search(r"reranker-service|(bench|tools)/\S+\.py", line):
            continue
        words = shlex.split(line.split("&&")[-1].split(">")[0])
        flags = {word.split("=")[0] for word in words if word.startswith("--")}
        if any(word.endswith("bin/reranker-service") for word in words):
            assert flags <= _service_flags(words), line
        script = next((word for word in words if re.match(r"(bench|tools)/.*\.py$", word)), None)
        if script is not None and flags:
            if script not in script_help:
                script_help[script] = subprocess.run(
                    [sys.executable, str(ROOT / script), "--help"],
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=True,
                ).stdout
            for flag in flags:
                documented = re.search(rf"{re.escape(flag)}\b", script_help[script])
                assert documented, f"{line!r}: {script} has no {flag}"


def test_pre_commit_runs_the_checks_of_the_test_command() -> None:
    config = ROOT / ".pre-commit-config.yaml"
    subprocess.run(
        [str(VENV_BIN / "pre-commit"), "validate-config", str(config)], check=True, timeout=60
    )
    hooks = [hook for repo in yaml.safe_load(config.read_text())["repos"] for hook in repo["hooks"]]
    assert {hook["id"] for hook in hooks} >= {"ruff", "ruff-format", "mypy", "lint-imports"}
    for hook in hooks:
        program = shlex.split(hook["entry"])[0]
        assert (ROOT / program).resolve().parent == VENV_BIN.resolve(), (
            f"hook {hook['id']} runs {program}, not a tool of the project's .venv"
        )


SAY_WHERE_THE_CHECKOUT_IS = {
    ROOT / "tests" / "support" / "paths.py",  # ROOT itself, two folders up
    ROOT / "tests" / "unit" / "test_docs.py",  # this check's own pattern
}


def test_no_test_reads_outside_the_checkout() -> None:
    """What the suite needs is vendored under tests/data/: a clone anywhere runs the same tests,
    none skipped for a folder that happens to sit beside it."""
    climbing = re.compile(r"ROOT\.parent\b|parents\[[2-9]\]|\.\./shared|\"shared\"")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in sorted((ROOT / "tests").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if climbing.search(line) and path not in SAY_WHERE_THE_CHECKOUT_IS
    ]
    assert offenders == []
