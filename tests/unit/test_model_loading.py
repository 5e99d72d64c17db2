"""What is not a servable Qwen3 reranker is refused with one clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForSequenceClassification

from reranker_service.engine.loading import LoadOptions, load_single_device_model
from reranker_service.engine.scoring import ModelLoadError


def _options(path: Path | str, **overrides: str) -> LoadOptions:
    values = {"device": "cpu", "dtype": "float32"} | overrides
    return LoadOptions(str(path), None, values["device"], values["dtype"], 512)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory") as refused:
        load_single_device_model(_options(tmp_path / "absent"))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("typed", ["./test-modle", "models/qwen/test-modle", "~/test-modle"])
def test_a_mistyped_local_path_is_no_such_directory(
    typed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not the hub's "Repo id must use alphanumeric chars": a path that is not there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="no such directory") as refused:
        load_single_device_model(_options(typed))
    assert "Repo id" not in str(refused.value)
    assert "test-modle" in str(refused.value)


def test_a_file_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_single_device_model(_options(tmp_path / "model.safetensors"))


@pytest.mark.parametrize(
    ("offline", "advice"),
    [(False, "set HF_HUB_OFFLINE=1"), (True, "HF_HUB_OFFLINE is set, so only a model already")],
)
def test_a_hub_id_without_network_says_what_to_do(
    offline: bool, advice: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without network, the advice is to go offline; already offline, it is not that again."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    with pytest.raises(ModelLoadError) as refused:
        load_single_device_model(_options("Qwen/No-Such-Reranker"))
    message = str(refused.value)
    assert advice in message
    assert "reranker-make-test-model" in message
    assert ("set HF_HUB_OFFLINE=1" in message) is not offline


def test_other_architecture_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    config = LlamaConfig(
        vocab_size=600,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, tmp_path / name)
    with pytest.raises(ModelLoadError, match="neither Qwen3-Reranker"):
        load_single_device_model(_options(tmp_path))


def test_a_classifier_of_two_labels_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    config = Qwen3Config.from_pretrained(checkpoint)
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.num_labels = 2
    Qwen3ForSequenceClassification(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, tmp_path / name)
    with pytest.raises(ModelLoadError, match="has 2 output labels; a reranker's classifier"):
        load_single_device_model(_options(tmp_path))


def test_tokenizer_without_single_yes_token_is_refused(tmp_path: Path, checkpoint: Path) -> None:
    shutil.copytree(checkpoint, tmp_path, dirs_exist_ok=True)
    tokenizer = json.loads((tmp_path / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["y_e_s"] = vocab.pop("yes")

    def touches_yes(merge: str | list[str]) -> bool:
        parts = merge.split(" ") if isinstance(merge, str) else merge
        return "yes" in parts or "".join(parts) == "yes"

    merges = tokenizer["model"]["merges"]
    tokenizer["model"]["merges"] = [merge for merge in merges if not touches_yes(merge)]
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ModelLoadError, match="single 'yes' token"):
        load_single_device_model(_options(tmp_path))


def test_missing_weights_are_refused(tmp_path: Path, checkpoint: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(checkpoint, tmp_path, dirs_exist_ok=True)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="lm_head"):
        load_single_device_model(_options(tmp_path))


def test_cuda_requested_without_cuda(checkpoint: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_single_device_model(_options(checkpoint, device="cuda"))


@pytest.mark.parametrize("requested", ["float32", "bfloat16"])
def test_a_named_dtype_is_served_as_named_on_cpu(checkpoint: Path, requested: str) -> None:
    model = load_single_device_model(_options(checkpoint, dtype=requested))
    assert model.description.dtype == requested
    assert model.description.device == "cpu"
