"""Load a Qwen3 reranker checkpoint and score padded batches of token ids.

Only the decoder runs: a pair's raw score is ``h · (w_yes - w_no)`` with ``h`` the final hidden
state of its last real token, which is ``logit(yes) - logit(no)`` without computing the other
~150k vocabulary logits; its sigmoid is the model card's softmax over the two.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import structlog
import torch
from transformers import DynamicCache

from reranker_service.engine.batcher import BatchTooLargeError
from reranker_service.engine.precision import (
    CpuDtypeChoice,
    PrecisionCheck,
    TimedScores,
    check_pairs,
    choose_auto_cpu_dtype,
    cpu_computes_bf16,
    read_cpu_flags,
    timed_scores,
)
from reranker_service.engine.prefix import SharedPrefix
from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.scoring import DeviceMemory, ModelDescription

logger = structlog.get_logger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
"""The formats a decoder is loaded in as they are; ``auto`` and ``int8`` are chosen or made
after loading (see ``resolve_dtype`` and ``_cpu_precision``)."""
_ARCHITECTURE = "Qwen3ForCausalLM"


class ModelLoadError(Exception):
    """The checkpoint cannot be served; the message is one line meant for the operator."""


@dataclass(frozen=True)
class LoadOptions:
    model: str
    revision: str | None
    device: str
    dtype: str
    max_length: int


def _cuda_device(requested: str) -> torch.device:
    """A CUDA device with its index: every report of it (model info, torch memory) names it
    the same way."""
    if not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
    device = torch.device(requested)
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ModelLoadError(
            f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
        )
    return torch.device("cuda", index)


def resolve_devices(requested: str) -> list[torch.device]:
    """The devices of ``RERANKER_DEVICE`` (validated by the settings), one per worker: ``auto``
    is the current GPU or else the CPU, ``cuda:all`` every GPU torch sees (those of
    ``CUDA_VISIBLE_DEVICES``), and a list its entries."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda:all":
        if not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda:all' requested but CUDA is not available")
        return [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
    devices = [
        torch.device("cpu") if entry == "cpu" else _cuda_device(entry)
        for entry in requested.split(",")
    ]
    gpus = [device for device in devices if device.type == "cuda"]
    if len(set(gpus)) != len(gpus):
        raise ModelLoadError(f"device {requested!r} names one GPU twice; one worker per GPU")
    return devices


def resolve_device(requested: str) -> torch.device:
    """The one device of a single-device ``requested``."""
    devices = resolve_devices(requested)
    if len(devices) != 1:
        raise ModelLoadError(f"device {requested!r} names {len(devices)} devices, not one")
    return devices[0]


def worker_names(devices: Sequence[torch.device]) -> list[str]:
    """Each worker's name, distinct: a GPU's is its device (``cuda:1``); the CPU's is ``cpu``,
    or ``cpu:0``, ``cpu:1`` ... when several workers share it."""
    if sum(device.type == "cpu" for device in devices) <= 1:
        return [str(device) for device in devices]
    return [f"cpu:{index}" for index in range(len(devices))]


def _bf16_native(device: torch.device) -> bool:
    """Whether the GPU computes bf16 in hardware (compute capability 8.0, Ampere, or later):
    asked of ``device`` itself, not of the thread's current GPU."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_dtype(requested: str, devices: Sequence[torch.device]) -> torch.dtype:
    """One dtype for every worker, so that a pair's score does not depend on which one took
    it: ``auto`` is bf16 where every GPU computes it natively, else fp16; on the CPU fp32, which
    ``_cpu_precision`` may then turn into bf16."""
    if requested != "auto":
        return _DTYPES[requested]
    gpus = [device for device in devices if device.type == "cuda"]
    if not gpus:
        return torch.float32
    return torch.bfloat16 if all(_bf16_native(device) for device in gpus) else torch.float16


def _device_uuid(device: torch.device) -> str | None:
    """The GPU's UUID in NVML's spelling (``GPU-`` and the hex digits); None on the CPU."""
    if device.type != "cuda":
        return None
    uuid = str(torch.cuda.get_device_properties(device).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _single_token_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_tokens_to_ids(word) != ids[0]:
        raise ModelLoadError(
            f"tokenizer has no single {word!r} token (encodes to {ids}); not a Qwen3 reranker"
        )
    return int(ids[0])


KeysValues = list[tuple[torch.Tensor, torch.Tensor]]
"""Per decoder layer, the keys and values of a sequence: ``[1, kv_heads, tokens, head_dim]``."""


def _right_padded(
    rows: Sequence[Sequence[int]], pad_token_id: int, *, pin: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one right-padded ``[rows, longest]`` id tensor, built in one scatter, and
    their lengths; in page-locked memory with ``pin``, so that copying them to the GPU does not
    wait for the device."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    width = int(lengths.max())
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, pin_memory=pin)
    real = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    input_ids[real] = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.long)
    return input_ids, lengths.pin_memory() if pin else lengths


@dataclass
class _PendingScores:
    """A launched pass's scores, copied to host memory when ``ready`` is reached."""

    scores: torch.Tensor
    ready: torch.Event | None

    def result(self) -> list[float]:
        if self.ready is not None:
            self.ready.synchronize()
        scores: list[float] = self.scores.tolist()
        return scores


def _rows_of(
    blocks: Sequence[torch.Tensor], row_slots: torch.Tensor, width: int, *, one_for_all: bool
) -> torch.Tensor:
    """One ``[rows, heads, width, head_dim]`` tensor whose row i holds ``blocks[row_slots[i]]``
    (``[1, heads, tokens, head_dim]``) left-aligned; a slot past the blocks is empty. With
    ``one_for_all`` (every row reads the one block) it is a view, no copy."""
    first = blocks[0]
    if one_for_all:
        return first.expand(len(row_slots), -1, -1, -1)
    slots = first.new_zeros((len(blocks) + 1, first.shape[1], width, first.shape[3]))
    for slot, block in enumerate(blocks):
        slots[slot, :, : block.shape[2]] = block[0]
    return slots.index_select(0, row_slots)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class Qwen3ScoringModel:
    """A Qwen3 decoder plus the yes-minus-no direction of its LM head: the engine's
    ``ScoringModel`` for Qwen3 rerankers."""

    def __init__(
        self,
        backbone: torch.nn.Module,
        score_direction: torch.Tensor,
        encoder: PromptEncoder,
        pad_token_id: int,
        description: ModelDescription,
    ) -> None:
        self._backbone = backbone
        self._score_direction = score_direction
        self._pad_token_id = pad_token_id
        self._device = score_direction.device
        self._name = description.device
        # A GPU computes asynchronously: host buffers are pinned, and nothing in a pass may
        # read a device value on the host before its scores.
        self._asynchronous = self._device.type == "cuda"
        self._full_masks = self._asynchronous
        self._dtype = next(backbone.parameters()).dtype
        # Newer transformers call the decoder's cache argument and output field "cache" (the
        # older "past_key_values" warns); take whichever this release has.
        parameters = inspect.signature(backbone.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self.encoder = encoder
        self.description = description

    def device_memory(self) -> DeviceMemory | None:
        """torch's allocator on the served GPU; None when serving on the CPU."""
        if self._device.type != "cuda":
            return None
        return DeviceMemory(
            device=str(self._device),
            allocated_bytes=torch.cuda.memory_allocated(self._device),
            reserved_bytes=torch.cuda.memory_reserved(self._device),
        )

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> list[float]:
        """The yes - no logit of each token sequence (P(yes) is its sigmoid); sequences are
        right-padded into one forward pass.
        A sequence with a prefix runs only its tokens after it, attending to the prefix's cached
        keys and values (computed first if the prefix has none yet). Out of device memory,
        raises ``BatchTooLargeError`` with the allocator's cache freed."""
        return self.launch(sequences, prefixes).result()

    def launch(
        self,
        sequences: Sequence[Sequence[int]],
        prefixes: Sequence[SharedPrefix | None] | None = None,
    ) -> _PendingScores:
        """``score``'s pass, returning once it is queued on the device: on a GPU the host is
        then free to prepare the next one. On the CPU the pass has run by then."""
        try:
            with torch.inference_mode():
                if prefixes is not None and any(prefix is not None for prefix in prefixes):
                    return self._score_after_prefixes(sequences, prefixes)
                return self._score(sequences)
        except torch.OutOfMemoryError as exc:
            # The traceback's frames hold the failed pass's activations: clear them, and let
            # the error go with this block, before the cache is freed and a retry may come.
            message = _first_line(exc)
            traceback.clear_frames(exc.__traceback__)
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        raise BatchTooLargeError(message)

    def bind_worker_thread(self) -> None:
        """Make the calling thread's current GPU this model's: kernels that take the current
        device rather than their tensors' (and ``torch.cuda`` calls without a device) would
        otherwise run on ``cuda:0``."""
        if self._device.type == "cuda":
            torch.cuda.set_device(self._device)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self._device, non_blocking=True)

    def _score(self, sequences: Sequence[Sequence[int]]) -> _PendingScores:
        input_ids, lengths = _right_padded(sequences, self._pad_token_id, pin=self._asynchronous)
        device_lengths = self._to_device(lengths)
        hidden = self._backbone(
            input_ids=self._to_device(input_ids),
            attention_mask=self._attention_mask(device_lengths, input_ids.shape[1]),
            use_cache=False,
        ).last_hidden_state
        return self._scores_at(hidden, device_lengths - 1)

    def _attention_mask(self, device_lengths: torch.Tensor, width: int) -> torch.Tensor | None:
        """What right-padded rows need besides causality: nothing, since a real token only
        sees the tokens before it, all real, and what padding positions compute is never read.
        So on the CPU no mask is passed, and attention takes its causal kernel, which on rows
        of thousands of tokens is about three times faster than a masked one. On a GPU a full
        causal mask is built on the device: without one, transformers reads the position ids
        on the host to detect packed sequences, a sync per pass that would stall the
        pipeline."""
        if not self._full_masks:
            return None
        no_prefix = torch.zeros_like(device_lengths)
        return self._prefix_mask(no_prefix, 0, device_lengths, width)

    def _scores_at(self, hidden: torch.Tensor, last_index: torch.Tensor) -> _PendingScores:
        """Each row's score at its last real token, copied to the host as the pass's one
        device-to-host transfer; on a GPU, without waiting for it."""
        rows = torch.arange(hidden.shape[0], device=self._device)
        logits = hidden[rows, last_index].float() @ self._score_direction
        # An overflowed pass (fp16 can) has an infinite or NaN logit, whose sigmoid would look
        # like a score (1.0); it comes out as NaN, which the batcher refuses to answer with.
        scores = logits.masked_fill_(~torch.isfinite(logits), torch.nan)
        if not self._asynchronous:
            return _PendingScores(scores, None)
        host = torch.empty(scores.shape, dtype=scores.dtype, pin_memory=True)
        host.copy_(scores, non_blocking=True)
        ready = torch.Event(self._device)
        # On this GPU's stream, named: a thread whose current device is another GPU (the
        # start-up warm-up's) would otherwise record it on that GPU's.
        ready.record(torch.cuda.current_stream(self._device))
        return _PendingScores(host, ready)

    def _compute_prefixes(self, prefixes: Sequence[SharedPrefix]) -> dict[int, KeysValues]:
        """Fill in this worker's keys and values of ``prefixes`` in one right-padded pass, and
        return them by prefix id. Each prefix keeps views of its own rows: valid, since a causal
        pass's first tokens never see the padding after them."""
        input_ids, lengths = _right_padded(
            [prefix.tokens for prefix in prefixes], self._pad_token_id, pin=self._asynchronous
        )
        output = self._backbone(
            input_ids=self._to_device(input_ids),
            attention_mask=self._attention_mask(self._to_device(lengths), input_ids.shape[1]),
            use_cache=True,
        )
        layers = [(layer.keys, layer.values) for layer in getattr(output, self._cache_name).layers]
        computed: dict[int, KeysValues] = {}
        for row, prefix in enumerate(prefixes):
            length = len(prefix)
            computed[id(prefix)] = prefix.states[self._name] = [
                (keys[row : row + 1, :, :length], values[row : row + 1, :, :length])
                for keys, values in layers
            ]
        return computed

    def _score_after_prefixes(
        self, sequences: Sequence[Sequence[int]], prefixes: Sequence[SharedPrefix | None]
    ) -> _PendingScores:
        """Rows continue after their request's cached prefix: their own tokens are right-padded,
        take positions that follow the prefix, and attend to their own prefix (left-aligned in
        a shared key block, the rest masked) and causally to their own tokens."""
        slot_of: dict[int, int] = {}
        distinct: list[SharedPrefix] = []
        for prefix in prefixes:
            if prefix is not None and id(prefix) not in slot_of:
                slot_of[id(prefix)] = len(distinct)
                distinct.append(prefix)
        # Read once: a withdrawn request's states may be dropped from another thread meanwhile.
        known = {id(prefix): prefix.states.get(self._name) for prefix in distinct}
        missing = [prefix for prefix in distinct if known[id(prefix)] is None]
        if missing:
            known.update(self._compute_prefixes(missing))
        states = [cast(KeysValues, known[id(prefix)]) for prefix in distinct]
        skipped = [len(prefix) if prefix is not None else 0 for prefix in prefixes]
        own_ids, own_lengths = _right_padded(
            [sequence[skip:] for sequence, skip in zip(sequences, skipped, strict=True)],
            self._pad_token_id,
            pin=self._asynchronous,
        )
        longest_prefix = max(skipped)
        # Decided here, on the host: checking row_slots per layer would sync the device.
        one_for_all = len(distinct) == 1 and all(p is not None for p in prefixes)
        # Rows without a prefix read the empty slot after the distinct prefixes. One host
        # buffer carries each row's slot and prefix length to the device.
        row_facts = torch.tensor(
            [
                [slot_of[id(p)] if p is not None else len(distinct) for p in prefixes],
                skipped,
            ],
            dtype=torch.long,
        )
        row_slots, prefix_lengths = self._to_device(
            row_facts.pin_memory() if self._asynchronous else row_facts
        )
        cache = DynamicCache(
            ddp_cache_data=[
                (
                    _rows_of(
                        [state[layer][0] for state in states],
                        row_slots,
                        longest_prefix,
                        one_for_all=one_for_all,
                    ),
                    _rows_of(
                        [state[layer][1] for state in states],
                        row_slots,
                        longest_prefix,
                        one_for_all=one_for_all,
                    ),
                )
                for layer in range(len(states[0]))
            ]
        )
        width = own_ids.shape[1]
        device_own_lengths = self._to_device(own_lengths)
        positions = prefix_lengths.unsqueeze(1) + torch.arange(width, device=self._device)
        hidden = self._backbone(
            input_ids=self._to_device(own_ids),
            attention_mask=self._prefix_mask(
                prefix_lengths, longest_prefix, device_own_lengths, width
            ),
            position_ids=positions,
            use_cache=True,
            **{self._cache_name: cache},
        ).last_hidden_state
        return self._scores_at(hidden, device_own_lengths - 1)

    def _prefix_mask(
        self,
        prefix_lengths: torch.Tensor,
        key_prefix: int,
        own_lengths: torch.Tensor,
        width: int,
    ) -> torch.Tensor:
        """``[rows, 1, own tokens, key_prefix + own tokens]``, additive, built on the device:
        row i's token t sees its prefix's first ``prefix_lengths[i]`` keys and its own tokens
        up to t."""
        keys = torch.arange(key_prefix + width, device=self._device).view(1, 1, -1)
        own_key = keys - key_prefix
        query = torch.arange(width, device=self._device).view(1, -1, 1)
        sees_prefix = keys < prefix_lengths.view(-1, 1, 1)
        sees_own = (own_key >= 0) & (own_key <= query) & (own_key < own_lengths.view(-1, 1, 1))
        blocked = ~(sees_prefix | sees_own)
        mask = torch.zeros(blocked.shape, dtype=self._dtype, device=self._device)
        mask.masked_fill_(blocked, torch.finfo(self._dtype).min)
        return mask.unsqueeze(1)


def load_scoring_models(options: LoadOptions) -> list[Qwen3ScoringModel]:
    """Load tokenizer and weights once, and one replica per device of ``options.device``;
    raise ``ModelLoadError`` for anything unservable."""
    try:
        models, cpu_choice = _load(options)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {options.model!r}: {_first_line(exc)}") from exc
    choice_fields: dict[str, Any] = {}
    if cpu_choice is not None:
        choice_fields["dtype_reason"] = cpu_choice.reason
        if cpu_choice.check is not None:
            prefix = "int8" if cpu_choice.dtype == "int8" else "bf16"
            choice_fields.update(cpu_choice.check.fields(prefix))
    for model in models:
        described = model.description
        logger.info(
            "model_loaded",
            model=described.model,
            revision=described.revision,
            device=described.device,
            device_uuid=described.device_uuid,
            dtype=described.dtype,
            load_seconds=round(described.load_seconds, 3),
            **choice_fields,
        )
    return models


def load_scoring_model(options: LoadOptions) -> Qwen3ScoringModel:
    """``load_scoring_models`` for a single device."""
    models = load_scoring_models(options)
    if len(models) != 1:
        raise ModelLoadError(f"device {options.device!r} names {len(models)} devices, not one")
    return models[0]


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


def _quantize_int8(decoder: torch.nn.Module) -> None:
    """The decoder's linear layers to int8 weights with int8 activations quantized per pass
    (torchao), in place; embeddings and norms stay in fp32."""
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(
            f"RERANKER_DTYPE=int8 needs torchao, which cannot be imported: {_first_line(exc)}"
        ) from exc
    quantize_(decoder, Int8DynamicActivationInt8WeightConfig())


def _cpu_precision(
    requested: str,
    checkpoint: _Checkpoint,
    encoder: PromptEncoder,
    pad_token_id: int,
) -> tuple[torch.nn.Module, torch.Tensor, CpuDtypeChoice]:
    """``auto`` or ``int8`` on the CPU: the decoder in the number format chosen, measured
    against fp32 on the self-check's pairs."""
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
        model = Qwen3ScoringModel(backbone, direction, encoder, pad_token_id, description)
        with torch.inference_mode():
            return timed_scores(model.score, pairs)

    def check_against_fp32(convert: Callable[[torch.nn.Module], object]) -> PrecisionCheck:
        """Score the check's pairs in fp32, convert the decoder in place (no second copy of
        the weights), score them again."""
        reference = scores_of(decoder)
        convert(decoder)
        return PrecisionCheck.of(reference, scores_of(decoder))

    if requested == "int8":
        check = check_against_fp32(_quantize_int8)
        return decoder, direction, CpuDtypeChoice("int8", "requested (RERANKER_DTYPE=int8)", check)

    # Without native bf16 the check does not run, and neither does its fp32 pass.
    def bf16_check() -> PrecisionCheck:
        return check_against_fp32(lambda backbone: backbone.to(torch.bfloat16))

    choice = choose_auto_cpu_dtype(cpu_computes_bf16(read_cpu_flags()), bf16_check)
    if choice.dtype == "float32" and choice.check is not None:
        # The check rounded the weights to bf16: read them again.
        decoder, direction = checkpoint.decoder(torch.float32)
    return decoder, direction, choice


def _load(options: LoadOptions) -> tuple[list[Qwen3ScoringModel], CpuDtypeChoice | None]:
    from transformers import AutoConfig, AutoTokenizer

    started = time.perf_counter()
    devices = resolve_devices(options.device)
    on_cpu = all(device.type == "cpu" for device in devices)
    if options.dtype == "int8" and not on_cpu:
        raise ModelLoadError(
            "RERANKER_DTYPE=int8 runs on the CPU only; on a GPU use auto or bfloat16 "
            f"(RERANKER_DEVICE={options.device!r})"
        )
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
    if on_cpu and options.dtype in ("auto", "int8"):
        decoder, direction, cpu_choice = _cpu_precision(
            options.dtype, checkpoint, encoder, int(pad_token_id)
        )
        dtype_name = cpu_choice.dtype
    else:
        dtype = resolve_dtype(options.dtype, devices)
        decoder, direction = checkpoint.decoder(dtype)
        dtype_name = str(dtype).removeprefix("torch.")
    revision = str(getattr(config, "_commit_hash", None) or "local")

    models = []
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
            device_uuid=_device_uuid(device),
        )
        models.append(
            Qwen3ScoringModel(
                backbone, direction.to(device), encoder, int(pad_token_id), description
            )
        )
    return models, cpu_choice
