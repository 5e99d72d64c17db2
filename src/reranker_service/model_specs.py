"""Which models one process serves, and with what options: ``RERANKER_MODELS`` (``name=
checkpoint`` pairs), ``RERANKER_MODELS_FILE`` (YAML, per-model options), or ``RERANKER_MODEL``
alone (one model, named by its checkpoint, as before there were several).

    # models.yaml: the first is the default, for requests that name none
    models:
      qwen:
        model: Qwen/Qwen3-Reranker-0.6B
        aliases: [rerank-english]
      bge:
        model: BAAI/bge-reranker-v2-m3
        max_length: 1024
        dtype: float16

Every option a model does not set is the process-wide setting's (``RERANKER_DEVICE``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DType = Literal["auto", "float32", "float16", "bfloat16"]
PromptChoice = Literal["auto", "none"]

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda(:\d+)?)$")
_NAME_PATTERN = re.compile(r"^[^\s,=]{1,256}$")
"""A name is sent in requests and is a metric label value: no spaces, commas or equals signs
(``RERANKER_MODELS`` separates with those). A model served alone is named by its checkpoint,
a path perhaps."""


def normalized_devices(value: str) -> str:
    """``RERANKER_DEVICE``'s value checked and without spaces; ``ValueError`` saying why not."""
    entries = [entry.strip() for entry in value.split(",")]
    if entries in (["auto"], ["cuda:all"]):
        return entries[0]
    if not all(_DEVICE_PATTERN.match(entry) for entry in entries):
        raise ValueError(
            "must be auto, cuda:all, or a comma-separated list of cpu, cuda and cuda:N"
        )
    if len({entry.partition(":")[0] for entry in entries}) > 1:
        raise ValueError("cannot mix cpu and cuda workers: the slower would hold up batches")
    gpus = [entry for entry in entries if entry != "cpu"]
    if len(set(gpus)) != len(gpus):
        raise ValueError("names a GPU twice; one worker per GPU")
    return ",".join(entries)


class ModelSpec(BaseModel):
    """One served model, every option resolved."""

    model_config = ConfigDict(frozen=True)

    name: str
    """What requests send as ``model``, and the ``model`` label of its metrics."""
    model: str
    """Hugging Face id or local directory."""
    revision: str | None = None
    device: str = "auto"
    dtype: DType = "auto"
    max_length: int = 8192
    max_batch_tokens: int | None = None
    default_instruction: str | None = None
    """None: the process-wide ``RERANKER_DEFAULT_INSTRUCTION``."""
    aliases: tuple[str, ...] = ()
    """Other names requests may send for it."""
    prompt: PromptChoice = "auto"
    """``none`` serves a Qwen3 sequence classifier as a plain cross-encoder, without
    Qwen3-Reranker's prompt."""

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


class ModelOptions(BaseModel):
    """A model's options in ``RERANKER_MODELS_FILE``: any it leaves out are the process's."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, min_length=1)
    revision: str | None = None
    device: str | None = None
    dtype: DType | None = None
    max_length: int | None = Field(None, ge=64, le=131072)
    max_batch_tokens: int | None = Field(None, ge=1)
    default_instruction: str | None = Field(None, min_length=1)
    aliases: list[str] = Field(default_factory=list)
    prompt: PromptChoice | None = None


def parse_model_pairs(text: str) -> dict[str, str]:
    """``RERANKER_MODELS``: ``name=checkpoint`` pairs separated by commas, in order."""
    pairs: dict[str, str] = {}
    for item in text.split(","):
        name, equals, checkpoint = (part.strip() for part in item.partition("="))
        if not equals or not name or not checkpoint:
            raise ValueError(f"{item.strip()!r} is not name=checkpoint")
        if name in pairs:
            raise ValueError(f"names model {name!r} twice")
        pairs[name] = checkpoint
    return pairs


def read_models_file(path: Path) -> dict[str, ModelOptions]:
    """The file's ``models`` mapping, name to options, in its order."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{str(path)!r} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{str(path)!r} is not YAML: {exc}") from None
    models = document.get("models") if isinstance(document, dict) else None
    if not isinstance(models, dict) or not models:
        raise ValueError(f"{str(path)!r} needs a 'models' mapping of name to options")
    entries: dict[str, ModelOptions] = {}
    for name, options in models.items():
        try:
            entries[str(name)] = ModelOptions.model_validate(options or {})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'entry'}: {error['msg']}"
                for error in exc.errors()
            )
            raise ValueError(f"{str(path)!r}, model {name!r}: {problems}") from None
    return entries


def model_specs(
    pairs: Mapping[str, str],
    file_entries: Mapping[str, ModelOptions],
    defaults: Mapping[str, Any],
) -> tuple[ModelSpec, ...]:
    """The served models: ``pairs``'s (``RERANKER_MODELS``) in their order, each with its
    file entry's options; or, without pairs, the file's models in its order. ``defaults`` are
    the process-wide values of every option a model leaves out."""
    names: Sequence[str] = list(pairs) or list(file_entries)
    if pairs:
        unknown = sorted(set(file_entries) - set(pairs))
        if unknown:
            raise ValueError(
                f"RERANKER_MODELS_FILE sets options for {unknown}, which RERANKER_MODELS does "
                f"not serve (it serves {list(pairs)})"
            )
    specs = []
    for name in names:
        entry = file_entries.get(name) or ModelOptions()
        checkpoint = pairs.get(name) or entry.model
        if checkpoint is None:
            raise ValueError(f"model {name!r} names no checkpoint ('model:')")
        if entry.model is not None and checkpoint != entry.model:
            raise ValueError(
                f"model {name!r} is {checkpoint!r} in RERANKER_MODELS but {entry.model!r} in "
                "RERANKER_MODELS_FILE"
            )
        given = entry.model_dump(exclude_none=True, exclude={"model", "aliases"})
        options = {**defaults, **given}
        device = normalized_devices(str(options["device"]))
        specs.append(
            ModelSpec(
                **{**options, "device": device},
                name=name,
                model=checkpoint,
                aliases=tuple(entry.aliases),
            )
        )
    _check_names(specs)
    for spec in specs:
        if spec.max_batch_tokens is not None and spec.max_batch_tokens < spec.max_length:
            raise ValueError(
                f"model {spec.name!r}: max_batch_tokens ({spec.max_batch_tokens}) must be at "
                f"least max_length ({spec.max_length})"
            )
    return tuple(specs)


def _check_names(specs: Sequence[ModelSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        for name in spec.names:
            if not _NAME_PATTERN.match(name):
                raise ValueError(
                    f"{name!r} is not a model name: 1 to 256 characters, no spaces, commas or "
                    "equals signs"
                )
            if name in seen:
                raise ValueError(f"the name {name!r} is given to {seen[name]!r} and {spec.name!r}")
            seen[name] = spec.name
