"""Load a Qwen3 reranker checkpoint and score padded batches of token ids.

Only the decoder runs: the score is ``sigmoid(h · (w_yes - w_no))`` with ``h`` the final hidden
state of each pair's last real token, which equals the model card's softmax over the ``no`` and
``yes`` logits without computing the other ~150k vocabulary logits.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
import torch

from reranker_service.engine.batcher import BatchTooLargeError
from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.scoring import DeviceMemory, ModelDescription

logger = structlog.get_logger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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


def resolve_device(requested: str) -> torch.device:
    """A concrete device; CUDA devices always carry their index, so that every report of the
    device (model info, torch memory) names it the same way."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {requested!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
        device = torch.device("cuda", index)
    return device


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _single_token_id(tokenizer: Any, word: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1 or tokenizer.convert_tokens_to_ids(word) != ids[0]:
        raise ModelLoadError(
            f"tokenizer has no single {word!r} token (encodes to {ids}); not a Qwen3 reranker"
        )
    return int(ids[0])


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

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """P(yes) for each token sequence; sequences are right-padded into one forward pass.
        Out of device memory, raises ``BatchTooLargeError`` with the allocator's cache freed."""
        try:
            return self._score(sequences)
        except torch.OutOfMemoryError as exc:
            if self._device.type == "cuda":
                torch.cuda.empty_cache()
            raise BatchTooLargeError(_first_line(exc)) from exc

    def _score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
        width = int(lengths.max())
        input_ids = torch.full((len(sequences), width), self._pad_token_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        # Equal lengths need no mask, which lets attention take its plain causal fast path.
        attention_mask = None
        if int(lengths.min()) != width:
            attention_mask = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
            attention_mask = attention_mask.to(self._device, dtype=torch.long, non_blocking=True)
        with torch.inference_mode():
            hidden = self._backbone(
                input_ids=input_ids.to(self._device, non_blocking=True),
                attention_mask=attention_mask,
                use_cache=False,
            ).last_hidden_state
            last_index = (lengths - 1).to(self._device)
            last_hidden = hidden[torch.arange(len(sequences), device=self._device), last_index]
            logits = last_hidden.float() @ self._score_direction
            scores: list[float] = torch.sigmoid(logits).cpu().tolist()
        return scores


def load_scoring_model(options: LoadOptions) -> Qwen3ScoringModel:
    """Load tokenizer and weights once; raise ``ModelLoadError`` for anything unservable."""
    try:
        model = _load(options)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot load model {options.model!r}: {_first_line(exc)}") from exc
    described = model.description
    logger.info(
        "model_loaded",
        model=described.model,
        revision=described.revision,
        device=described.device,
        dtype=described.dtype,
        load_seconds=round(described.load_seconds, 3),
    )
    return model


def _load(options: LoadOptions) -> Qwen3ScoringModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype, device)
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

    loaded: Any = AutoModelForCausalLM.from_pretrained(
        options.model,
        revision=options.revision,
        config=config,
        dtype=dtype,
        output_loading_info=True,
    )
    causal_lm, loading_info = loaded
    missing = [key for key in loading_info.get("missing_keys", []) if key]
    if missing:
        raise ModelLoadError(
            f"{options.model!r} lacks weights {sorted(missing)[:3]}; not a complete Qwen3 reranker"
        )
    lm_head = causal_lm.get_output_embeddings().weight
    score_direction = (lm_head[yes_id].float() - lm_head[no_id].float()).to(device)
    # Keep the decoder only: an untied LM head is vocabulary x hidden of memory never used.
    backbone = causal_lm.get_decoder().to(device).eval()
    del causal_lm, lm_head

    description = ModelDescription(
        model=options.model,
        revision=str(getattr(config, "_commit_hash", None) or "local"),
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        max_length=options.max_length,
        load_seconds=time.perf_counter() - started,
    )
    return Qwen3ScoringModel(backbone, score_direction, encoder, int(pad_token_id), description)
