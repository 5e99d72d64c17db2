"""Which models a process serves: ``RERANKER_MODEL`` alone as before, ``RERANKER_MODELS`` pairs,
``RERANKER_MODELS_FILE`` options; every mistake a clear configuration error."""

from __future__ import annotations

from pathlib import Path

import pytest

from reranker_service.cli import SettingsError, load_settings
from reranker_service.settings import Settings


def test_one_model_is_named_by_its_checkpoint() -> None:
    [spec] = Settings(model="./my-model", device="cpu", max_length=512).model_specs
    assert (spec.name, spec.model, spec.device, spec.max_length) == (
        "./my-model",
        "./my-model",
        "cpu",
        512,
    )


def test_models_are_pairs_in_order_with_the_process_options() -> None:
    settings = Settings(models="qwen=Qwen/Qwen3-Reranker-0.6B, bge = BAAI/bge-reranker-v2-m3")
    specs = settings.model_specs
    assert [(spec.name, spec.model) for spec in specs] == [
        ("qwen", "Qwen/Qwen3-Reranker-0.6B"),
        ("bge", "BAAI/bge-reranker-v2-m3"),
    ]
    assert {spec.dtype for spec in specs} == {settings.dtype}


def test_the_file_adds_options_by_name(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        "  bge:\n"
        "    max_length: 1024\n"
        "    dtype: float16\n"
        "    aliases: [multilingual, bge-m3]\n"
        "  qwen:\n"
        "    default_instruction: Find the passage that answers the question\n"
    )
    settings = load_settings(
        [
            "--models",
            "qwen=Qwen/Qwen3-Reranker-0.6B,bge=BAAI/bge-reranker-v2-m3",
            "--models-file",
            str(models_file),
            "--max-length",
            "4096",
        ]
    )
    qwen, bge = settings.model_specs
    assert (qwen.max_length, qwen.dtype, qwen.default_instruction) == (
        4096,
        "auto",
        "Find the passage that answers the question",
    )
    assert (bge.max_length, bge.dtype, bge.aliases) == (1024, "float16", ("multilingual", "bge-m3"))


def test_the_file_alone_lists_the_models(tmp_path: Path) -> None:
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        "models:\n"
        "  small:\n    model: ./bert\n    device: cpu\n    prompt: none\n"
        "  big:\n    model: ./qwen\n"
    )
    small, big = Settings(models_file=str(models_file)).model_specs
    assert (small.name, small.model, small.device, small.prompt) == (
        "small",
        "./bert",
        "cpu",
        "none",
    )
    assert (big.name, big.model, big.prompt) == ("big", "./qwen", "auto")


@pytest.mark.parametrize(
    ("arguments", "file_text", "message"),
    [
        (["--models", "qwen"], None, "'qwen' is not name=checkpoint"),
        (["--models", "a=x,a=y"], None, "names model 'a' twice"),
        (["--models", "a=x", "--model", "y"], None, "set RERANKER_MODEL, or RERANKER_MODELS"),
        (["--model", "y"], "models:\n  a:\n    model: x\n", "set RERANKER_MODEL, or"),
        (["--models", "a=x"], "models:\n  b:\n    max_length: 512\n", "sets options for ['b']"),
        ([], "models:\n  a:\n    max_length: 512\n", "model 'a' names no checkpoint"),
        ([], "models:\n  a:\n    model: x\n    colour: red\n", "colour: Extra inputs"),
        ([], "models: [a, b]\n", "needs a 'models' mapping"),
        ([], "models: {a: {model: x}}\n  - bad", "is not YAML"),
        (
            ["--models", "a=x,b=y"],
            "models:\n  b:\n    aliases: [a]\n",
            "the name 'a' is given to 'a' and 'b'",
        ),
        (["--models", "a b=x"], None, "'a b' is not a model name"),
        ([], "models:\n  a:\n    model: x\n    device: tpu\n", "must be auto, cuda:all"),
        (
            ["--models", "a=x"],
            "models:\n  a:\n    max_batch_tokens: 100\n",
            "max_batch_tokens (100) must be at least max_length",
        ),
    ],
)
def test_a_bad_model_list_is_a_configuration_error(
    tmp_path: Path, arguments: list[str], file_text: str | None, message: str
) -> None:
    if file_text is not None:
        models_file = tmp_path / "models.yaml"
        models_file.write_text(file_text)
        arguments = [*arguments, "--models-file", str(models_file)]
    with pytest.raises(SettingsError, match="invalid configuration") as refused:
        load_settings(arguments)
    assert message in str(refused.value)


def test_an_unreadable_models_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read"):
        load_settings(["--models-file", str(tmp_path / "missing.yaml")])
