"""Load a reranker checkpoint: tell which kind it is (``checkpoint``), read the tokenizer and
the weights once, choose the CPU's number format, and build one runner per device."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import structlog
import torch

from reranker_service.engine.checkpoint import Checkpoint, PromptChoice, Replica, open_checkpoint
from reranker_service.engine.devices import (
    device_uuid,
    resolve_devices,
    resolve_dtype,
    worker_names,
)
from reranker_service.engine.precision import (
    CpuDtypeChoice,
    PrecisionCheck,
    TimedScores,
    check_pairs,
    choose_auto_cpu_dtype,
    read_cpu_flags,
    timed_scores,
)
from reranker_service.engine.runner.build import RunnerOptions, plan_runner, prepare_compiler
from reranker_service.engine.runner.protocol import (
    ModelRunner,
    RunnerUpgrade,
    ServedModel,
    run_pass,
)
from reranker_service.engine.runner.readout import first_line
from reranker_service.engine.runner.self_check import probe_requests
from reranker_service.engine.scoring import ModelDescription, ModelLoadError

logger = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LoadOptions:
    model: str
    revision: str | None
    device: str
    dtype: str
    max_length: int
    runner: RunnerOptions = field(default_factory=RunnerOptions)
    prompt: PromptChoice = "auto"
    """Whether a Qwen3 sequence classifier gets Qwen3-Reranker's prompt (``auto``: where its
    tokenizer has Qwen3's chat tokens) or is served as a plain cross-encoder (``none``)."""


_NO_HUB_HINT = (
    "; if this machine has no network, set HF_HUB_OFFLINE=1 and serve a model already in the "
    "hub cache or a local directory (reranker-make-test-model ./test-model makes a small one)"
)
_OFFLINE_HINT = (
    "; HF_HUB_OFFLINE is set, so only a model already in the hub cache (HF_HOME) or a local "
    "directory can be served (reranker-make-test-model ./test-model makes a small one)"
)


def _hub_hint(reason: str) -> str:
    """What to do about a model the hub could not give: go offline, or, already offline,
    serve what is here."""
    if "couldn't connect" not in reason and "offline" not in reason.lower():
        return ""
    return _OFFLINE_HINT if huggingface_hub.is_offline_mode() else _NO_HUB_HINT


def _looks_like_a_path(model: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else was meant as a directory."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _check_local_path(model: str) -> None:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"{model!r} is a file; RERANKER_MODEL names a checkpoint directory"
            )
    elif _looks_like_a_path(model):
        raise ModelLoadError(
            f"no such directory: {str(path.absolute())!r} (RERANKER_MODEL={model!r})"
        )


def load_model(options: LoadOptions) -> ServedModel:
    """Load tokenizer and weights once, and one runner per device of ``options.device``;
    raise ``ModelLoadError`` for anything unservable."""
    try:
        _check_local_path(options.model)
        model, cpu_choice = _load(options)
    except ModelLoadError:
        raise
    except Exception as exc:
        reason = first_line(exc)
        raise ModelLoadError(
            f"cannot load model {options.model!r}: {reason}{_hub_hint(reason)}"
        ) from exc
    choice_fields: dict[str, Any] = {}
    if cpu_choice is not None:
        choice_fields["dtype_reason"] = cpu_choice.reason
        if cpu_choice.check is not None:
            choice_fields.update(cpu_choice.check.fields("bf16"))
    for index, runner in enumerate(model.runners):
        described = runner.description
        upgrade = model.upgrade_of(index)
        compiles = "never" if upgrade is None else "background"
        if upgrade is not None and upgrade.foreground:
            compiles = "foreground"
        logger.info(
            "model_loaded",
            model=described.model,
            revision=described.revision,
            device=described.device,
            device_uuid=described.device_uuid,
            dtype=described.dtype,
            runner=runner.kind.name,
            kind=described.kind,
            architecture=described.architecture,
            compile=compiles,
            load_seconds=round(described.load_seconds, 3),
            **choice_fields,
        )
    return model


def load_single_device_model(options: LoadOptions) -> ServedModel:
    """``load_model`` for a single device."""
    model = load_model(options)
    if len(model.runners) != 1:
        raise ModelLoadError(
            f"device {options.device!r} names {len(model.runners)} devices, not one"
        )
    return model


def _cpu_precision(checkpoint: Checkpoint) -> tuple[Replica, CpuDtypeChoice]:
    """``auto`` on the CPU: the weights in the number format chosen, measured against fp32 on
    the self-check's pairs."""
    replica = checkpoint.read(torch.float32)
    pairs = check_pairs(checkpoint.encoder.encode)
    description = ModelDescription(
        model=checkpoint.name,
        revision="self-check",
        device="cpu",
        dtype="self-check",
        max_length=checkpoint.encoder.max_length,
        load_seconds=0.0,
        kind=checkpoint.kind,
        architecture=checkpoint.architecture,
    )

    def scores() -> TimedScores:
        runner = replica.eager_runner(description)
        with torch.inference_mode():
            return timed_scores(lambda sequences: run_pass(runner, sequences), pairs)

    # Without native bf16 the check does not run, and neither does its fp32 pass.
    def bf16_check() -> PrecisionCheck:
        """Score the check's pairs in fp32, convert the weights to bf16 in place (no second
        copy of them), score them again."""
        reference = scores()
        replica.module.to(torch.bfloat16)
        return PrecisionCheck.of(reference, scores())

    choice = choose_auto_cpu_dtype(read_cpu_flags(), bf16_check)
    if choice.dtype == "float32" and choice.check is not None:
        # The check rounded the weights to bf16: read them again.
        replica = checkpoint.read(torch.float32)
    return replica, choice


def _load(options: LoadOptions) -> tuple[ServedModel, CpuDtypeChoice | None]:
    started = time.perf_counter()
    devices = resolve_devices(options.device)
    on_cpu = all(device.type == "cpu" for device in devices)
    checkpoint = open_checkpoint(
        options.model, options.revision, options.max_length, options.prompt
    )
    encoder = checkpoint.encoder
    cpu_choice: CpuDtypeChoice | None = None
    if on_cpu and options.dtype == "auto":
        replica, cpu_choice = _cpu_precision(checkpoint)
        dtype_name = cpu_choice.dtype
    else:
        dtype = resolve_dtype(options.dtype, devices)
        replica = checkpoint.read(dtype)
        dtype_name = str(dtype).removeprefix("torch.")
    revision = str(getattr(checkpoint.config, "_commit_hash", None) or "local")
    weight_bytes = sum(
        parameter.numel() * parameter.element_size() for parameter in replica.module.parameters()
    )
    plan = plan_runner(options.runner, devices[0].type)
    probe = []
    if plan.compile != "never" and checkpoint.compilable:
        prepare_compiler(options.runner)
        probe = probe_requests(encoder.encode, encoder.max_length)

    runners: list[ModelRunner] = []
    upgrades: list[RunnerUpgrade | None] = []
    for index, (device, name) in enumerate(zip(devices, worker_names(devices), strict=True)):
        # CPU workers share the one set of weights (a pass only reads them); each GPU gets its
        # own copy, and the last takes the loaded weights themselves.
        last = index == len(devices) - 1
        on_device = replica.on(device, copied=device.type != "cpu" and not last)
        description = ModelDescription(
            model=options.model,
            revision=revision,
            device=name,
            dtype=dtype_name,
            max_length=encoder.max_length,
            load_seconds=time.perf_counter() - started,
            device_uuid=device_uuid(device),
            dtype_choice=cpu_choice.described() if cpu_choice is not None else None,
            kind=checkpoint.kind,
            architecture=checkpoint.architecture,
            weight_bytes=weight_bytes,
        )
        runner, upgrade = on_device.runners(description, plan, options.runner, probe)
        runners.append(runner)
        upgrades.append(upgrade)
    return ServedModel(encoder, tuple(runners), tuple(upgrades)), cpu_choice
