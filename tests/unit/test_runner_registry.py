"""The runner registry: every runner ``RERANKER_RUNNER`` names is built from it and scores as the
model card does; the settings offer exactly its names, without importing torch; a name it
lacks stops the configuration, and a registry that disagrees with the names does not import."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import ValidationError

from reranker_service.app import load_options
from reranker_service.cli import build_parser, load_settings
from reranker_service.engine.loading import load_single_device_model
from reranker_service.engine.runner.build import RUNNER_FACTORIES, RunnerOptions, plan_runner
from reranker_service.engine.runner.names import RUNNER_NAMES, RunnerName
from reranker_service.engine.runner.protocol import run_pass
from reranker_service.settings import DEFAULT_INSTRUCTION, Settings
from tests.support.model_card import ModelCardReranker
from tests.support.paths import ROOT
from tests.support.serving import make_settings

TOLERANCE = 1e-5
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "",
    "Ünïcödé: 中文文本, русский текст, emoji 🙂👍🏽",
]


def test_the_registry_builds_every_name_and_the_settings_offer_exactly_those() -> None:
    assert tuple(RUNNER_FACTORIES) == RUNNER_NAMES
    assert set(RUNNER_NAMES) >= {"padded", "packed"}
    offered = typing.get_args(Settings.model_fields["runner"].annotation)
    assert offered == ("auto", *RUNNER_NAMES)
    flag = next(a for a in build_parser()._actions if a.dest == "runner")
    assert flag.choices == ["auto", *RUNNER_NAMES]


@pytest.mark.parametrize("name", RUNNER_NAMES)
def test_each_registered_runner_builds_and_scores_as_the_model_card(
    name: RunnerName, checkpoint: Path, card: ModelCardReranker
) -> None:
    """Through the settings, the loader and the plan, as the service builds it."""
    model = load_single_device_model(load_options(make_settings(checkpoint, runner=name)))
    assert model.runner.kind.name == name
    scores = run_pass(model.runner, model.encoder.encode(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS))
    reference = card.raw_alone(DEFAULT_INSTRUCTION, QUERY, DOCUMENTS)
    worst = max(abs(ours - theirs) for ours, theirs in zip(scores, reference, strict=True))
    assert worst <= TOLERANCE, f"{name}: max abs difference {worst:.2e}"


@pytest.mark.parametrize("name", RUNNER_NAMES)
def test_a_named_runner_is_the_plan_where_nothing_compiles(name: RunnerName) -> None:
    for device_type in ("cpu", "cuda"):
        plan = plan_runner(RunnerOptions(runner=name, compile="false"), device_type)
        assert plan.kind == name
        assert plan.compile == "never"


def test_an_unknown_runner_fails_at_configuration() -> None:
    with pytest.raises(ValidationError, match="runner"):
        Settings(runner="fastest")
    with pytest.raises(SystemExit):
        load_settings(["--runner", "fastest"])
    with pytest.raises(ValueError, match="unknown runner 'fastest'"):
        RunnerOptions(runner="fastest")


def test_the_settings_import_no_torch() -> None:
    """They validate against the runners' names, not the registry (which builds runners)."""
    code = (
        "import sys, reranker_service.cli; "
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_a_name_without_a_factory_stops_the_registry_from_importing() -> None:
    code = (
        "import reranker_service.engine.runner.names as names; "
        "names.RUNNER_NAMES = (*names.RUNNER_NAMES, 'sparse'); "
        "import reranker_service.engine.runner.build"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "ImportError: the runner registry builds" in done.stderr
    assert "'sparse')" in done.stderr
