"""Load a Qwen3 reranker checkpoint: check that it is one, read the tokenizer and the weights
once, choose the CPU's number format, and build one runner per device."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import huggingface_hub
import structlog
import torch

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
from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.runner.build import (
    RunnerOptions,
    build_runner,
    plan_runner,
    prepare_compiler,
)
from reranker_service.engine.runner.padded import PaddedRunner
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

_ARCHITECTURE = "Qwen3ForCausalLM"


@dataclass(frozen=True)
class LoadOptions:
    model: str
    revision: str | None
    device: str
    dtype: str
    max_length: int
    runner: RunnerOptions = field(default_factory=RunnerOptions)


def _single_token_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_tokens_to_ids(word) != ids[0]:
        raise ModelLoadError(
            f"tokenizer has no single {word!r} token (encodes to {ids}); not a Qwen3 reranker"
        )
    return int(ids[0])


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


@dataclass(frozen=True)
class _Checkpoint:
    """What the loader needs to read the weights again."""

    options: LoadOptions
    config: Any
    yes_id: int
    no_id: int

    def decoder(self, dtype: torch.dtype) -> tuple[torch.nn.Module, torch.Tensor]:
        """The decoder in ``dtype``, and the yes - no direction of the LM head in fp32."""
        from transformers import AutoModelForCausalLM

        loaded: Any = AutoModelForCausalLM.from_pretrained(
            self.options.model,
            revision=self.options.revision,
            config=self.config,
            dtype=dtype,
            output_loading_info=True,
        )
        causal_lm, loading_info = loaded
        missing = [key for key in loading_info.get("missing_keys", []) if key]
        if missing:
            raise ModelLoadError(
                f"{self.options.model!r} lacks weights {sorted(missing)[:3]}; "
                "not a complete Qwen3 reranker"
            )
        lm_head = causal_lm.get_output_embeddings().weight
        direction = lm_head[self.yes_id].float() - lm_head[self.no_id].float()
        # Keep the decoder only: an untied LM head is vocabulary x hidden of memory never used.
        decoder = causal_lm.get_decoder().eval()
        del causal_lm, lm_head
        return decoder, direction


def _cpu_precision(
    checkpoint: _Checkpoint,
    encoder: PromptEncoder,
    pad_token_id: int,
) -> tuple[torch.nn.Module, torch.Tensor, CpuDtypeChoice]:
    """``auto`` on the CPU: the decoder in the number format chosen, measured against fp32 on
    the self-check's pairs."""
    decoder, direction = checkpoint.decoder(torch.float32)
    pairs = check_pairs(encoder.encode)
    description = ModelDescription(
        model=checkpoint.options.model,
        revision="self-check",
        device="cpu",
        dtype="self-check",
        max_length=checkpoint.options.max_length,
        load_seconds=0.0,
    )

    def scores_of(backbone: torch.nn.Module) -> TimedScores:
        runner = PaddedRunner(backbone, direction, pad_token_id, description)
        with torch.inference_mode():
            return timed_scores(lambda sequences: run_pass(runner, sequences), pairs)

    # Without native bf16 the check does not run, and neither does its fp32 pass.
    def bf16_check() -> PrecisionCheck:
        """Score the check's pairs in fp32, convert the decoder to bf16 in place (no second
        copy of the weights), score them again."""
        reference = scores_of(decoder)
        decoder.to(torch.bfloat16)
        return PrecisionCheck.of(reference, scores_of(decoder))

    choice = choose_auto_cpu_dtype(read_cpu_flags(), bf16_check)
    if choice.dtype == "float32" and choice.check is not None:
        # The check rounded the weights to bf16: read them again.
        decoder, direction = checkpoint.decoder(torch.float32)
    return decoder, direction, choice


def _load(options: LoadOptions) -> tuple[ServedModel, CpuDtypeChoice | None]:
    from transformers import AutoConfig, AutoTokenizer

    started = time.perf_counter()
    devices = resolve_devices(options.device)
    on_cpu = all(device.type == "cpu" for device in devices)
    config = AutoConfig.from_pretrained(options.model, revision=options.revision)
    architectures = list(getattr(config, "architectures", None) or [])
    if config.model_type != "qwen3" or _ARCHITECTURE not in architectures:
        raise ModelLoadError(
            f"{options.model!r} is a {config.model_type} model with architectures "
            f"{architectures}, not a Qwen3 reranker ({_ARCHITECTURE})"
        )
    tokenizer = AutoTokenizer.from_pretrained(options.model, revision=options.revision)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{options.model!r} has no fast tokenizer (tokenizer.json)")
    yes_id = _single_token_id(tokenizer, "yes")
    no_id = _single_token_id(tokenizer, "no")
    pad_token_id = tokenizer.pad_token_id
    if pad_token_id is None:
        pad_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    encoder = PromptEncoder.from_pretrained_tokenizer(tokenizer, options.max_length)
    checkpoint = _Checkpoint(options, config, yes_id, no_id)

    cpu_choice: CpuDtypeChoice | None = None
    if on_cpu and options.dtype == "auto":
        decoder, direction, cpu_choice = _cpu_precision(checkpoint, encoder, int(pad_token_id))
        dtype_name = cpu_choice.dtype
    else:
        dtype = resolve_dtype(options.dtype, devices)
        decoder, direction = checkpoint.decoder(dtype)
        dtype_name = str(dtype).removeprefix("torch.")
    revision = str(getattr(config, "_commit_hash", None) or "local")
    plan = plan_runner(options.runner, devices[0].type)
    probe = []
    if plan.compile != "never":
        prepare_compiler(options.runner)
        probe = probe_requests(encoder.encode, options.max_length)

    runners: list[ModelRunner] = []
    upgrades: list[RunnerUpgrade | None] = []
    for index, (device, name) in enumerate(zip(devices, worker_names(devices), strict=True)):
        # CPU workers share the one set of weights (a pass only reads them); each GPU gets its
        # own copy, and the last takes the loaded weights themselves.
        last = index == len(devices) - 1
        backbone = decoder if device.type == "cpu" or last else copy.deepcopy(decoder)
        backbone = backbone.to(device)
        description = ModelDescription(
            model=options.model,
            revision=revision,
            device=name,
            dtype=dtype_name,
            max_length=options.max_length,
            load_seconds=time.perf_counter() - started,
            device_uuid=device_uuid(device),
            dtype_choice=cpu_choice.described() if cpu_choice is not None else None,
        )
        runner, upgrade = build_runner(
            backbone,
            direction.to(device),
            int(pad_token_id),
            description,
            plan,
            options.runner,
            probe,
        )
        runners.append(runner)
        upgrades.append(upgrade)
    return ServedModel(encoder, tuple(runners), tuple(upgrades)), cpu_choice
