"""What the engine knows of the model it serves, as plain data: what a worker serves, its
device's memory, how a raw score becomes P(yes), and the error of a checkpoint that cannot be
served. The bottom of the engine: it imports nothing of it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

ModelKind = Literal["qwen3", "qwen3-seq-cls", "seq-cls"]
"""How a checkpoint scores a pair: Qwen3-Reranker as a causal LM (the prompt, P(yes) from the
yes and no logits), Qwen3-Reranker's sequence-classification form (the same prompt, its one
logit), or a cross-encoder (the tokenizer's pair template, its one logit)."""

MODEL_KINDS: Final[tuple[ModelKind, ...]] = ("qwen3", "qwen3-seq-cls", "seq-cls")


class ModelLoadError(Exception):
    """The checkpoint cannot be served; the message is one line meant for the operator."""


def probability(logit: float) -> float:
    """P(yes) from the yes - no logit: the model card's softmax over the two logits; for a
    one-label classifier, ``CrossEncoder``'s default activation of its logit (a sigmoid)."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    odds = math.exp(logit)
    return odds / (1.0 + odds)


_DEFAULT_BATCH_TOKENS = {"cuda": 32768, "cpu": 8192}
"""Tokens per forward pass when the operator sets no budget: a GPU needs big batches to be
busy; a CPU gains little from them. Within it, the batch policy follows the pass cost measured
at start-up and kept current from the passes the worker times."""


def default_batch_tokens(device_type: str, max_length: int) -> int:
    """The pass budget of a device type where the operator set none: a whole pair fits."""
    return max(_DEFAULT_BATCH_TOKENS[device_type], max_length)


@dataclass(frozen=True)
class DtypeChoice:
    """Why a CPU serves the number format it does (``RERANKER_DTYPE=auto``): the
    same on every start of one checkpoint on one machine, since nothing timed decides it."""

    reason: str
    cpu_flags: tuple[str, ...]
    """The CPU's flags that compute bf16 natively (``amx_bf16``, ``avx512_bf16``, ``bf16``),
    as Linux lists them."""
    self_check_max_difference: float | None
    """Largest |P(yes) - P(yes) in fp32| over the self-check's pairs, where it ran."""


@dataclass(frozen=True)
class ModelDescription:
    """What one worker serves. ``device`` is the worker's name, distinct per worker: ``cuda:1``,
    or ``cpu``; several CPU workers are ``cpu:0``, ``cpu:1``."""

    model: str
    revision: str
    device: str
    dtype: str
    max_length: int
    load_seconds: float
    device_uuid: str | None = None
    """The GPU's UUID as the driver reports it (``GPU-...``), which NVML also gives: torch and
    NVML number GPUs differently, the UUID names one card for both. None on the CPU."""
    dtype_choice: DtypeChoice | None = None
    """Why this format, on a CPU under ``auto``; None where it was asked for."""
    kind: ModelKind = "qwen3"
    architecture: str = "Qwen3ForCausalLM"
    """The checkpoint's transformers class."""
    weight_bytes: int = 0
    """Memory the replica's weights take."""

    @property
    def device_type(self) -> str:
        """``cuda`` or ``cpu``: what the engine's defaults depend on."""
        return self.device.partition(":")[0]


@dataclass(frozen=True)
class DeviceMemory:
    """torch's caching allocator on the served device."""

    device: str
    allocated_bytes: int
    reserved_bytes: int
