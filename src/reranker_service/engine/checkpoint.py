"""What a checkpoint is, read from its configuration and tokenizer (never from its name), and
how its weights become a replica on a device:

- ``qwen3``: ``Qwen3ForCausalLM``, Qwen3-Reranker as published. The decoder and the yes - no
  direction of its LM head.
- ``qwen3-seq-cls``: a one-label ``Qwen3ForSequenceClassification`` whose tokenizer has Qwen3's
  chat tokens, as the ``-seq-cls`` conversions are (their score row is ``w_yes - w_no``). The
  decoder and that row: the same prompt, runners and prefix reuse as the causal form.
- ``seq-cls``: any other one-label ``*ForSequenceClassification`` transformers has a class for
  (BERT, XLM-RoBERTa, ModernBERT, ELECTRA, DeBERTa-v2, a decoder's without the prompt): the
  whole model, run by ``ClassifierRunner``, its pairs encoded as ``CrossEncoder`` encodes them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog
import torch

from reranker_service.engine.pairs import PairEncoder
from reranker_service.engine.prompt import PromptEncoder
from reranker_service.engine.runner.build import (
    PackedRunnerUpgrade,
    RunnerOptions,
    RunnerPlan,
    build_runner,
)
from reranker_service.engine.runner.classifier import ClassifierRunner
from reranker_service.engine.runner.names import COMPILED_RUNNER
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import ModelRunner
from reranker_service.engine.runner.self_check import ProbeRequest
from reranker_service.engine.scoring import ModelDescription, ModelKind, ModelLoadError
from reranker_service.engine.text_pairs import TextPairEncoder

logger = structlog.get_logger(__name__)

PromptChoice = Literal["auto", "none"]
"""``auto``: a Qwen3 sequence classifier with Qwen3's chat tokens gets Qwen3-Reranker's prompt;
``none``: it is served as a plain cross-encoder."""

_CAUSAL_ARCHITECTURE = "Qwen3ForCausalLM"
_CLASSIFIER_SUFFIX = "ForSequenceClassification"
_QWEN3_CHAT_TOKENS = ("<|im_start|>", "<|im_end|>")
_POSITION_OFFSET_MODELS = frozenset({"roberta", "xlm-roberta", "camembert"})
"""Models whose positions start after the padding index (``padding_idx + 1``)."""
_NO_LIMIT = 1_000_000
"""A tokenizer's ``model_max_length`` at or above this is transformers' "no limit" value."""


class Replica(Protocol):
    """One copy of a checkpoint's weights, on one device."""

    @property
    def module(self) -> torch.nn.Module:
        """The weights (converted in place by the CPU's bf16 self-check)."""
        ...

    def on(self, device: torch.device, *, copied: bool) -> Replica:
        """This replica on ``device``; with ``copied``, a copy of the weights goes there."""
        ...

    def eager_runner(self, description: ModelDescription) -> ModelRunner:
        """A runner that needs no compiler, for the start-up self-checks."""
        ...

    def runners(
        self,
        description: ModelDescription,
        plan: RunnerPlan,
        options: RunnerOptions,
        probe: Sequence[ProbeRequest],
    ) -> tuple[ModelRunner, PackedRunnerUpgrade | None]:
        """The runner the replica is ready on, and the compiled one to take over, if any."""
        ...


@dataclass(frozen=True)
class DecoderReplica:
    """A Qwen3 decoder and the direction its final hidden state is scored along."""

    backbone: torch.nn.Module = field(repr=False)
    direction: torch.Tensor = field(repr=False)
    pad_token_id: int

    @property
    def module(self) -> torch.nn.Module:
        return self.backbone

    def on(self, device: torch.device, *, copied: bool) -> DecoderReplica:
        backbone = copy.deepcopy(self.backbone) if copied else self.backbone
        return DecoderReplica(backbone.to(device), self.direction.to(device), self.pad_token_id)

    def eager_runner(self, description: ModelDescription) -> ModelRunner:
        return PaddedRunner(self.backbone, self.direction, self.pad_token_id, description)

    def runners(
        self,
        description: ModelDescription,
        plan: RunnerPlan,
        options: RunnerOptions,
        probe: Sequence[ProbeRequest],
    ) -> tuple[ModelRunner, PackedRunnerUpgrade | None]:
        return build_runner(
            self.backbone, self.direction, self.pad_token_id, description, plan, options, probe
        )


@dataclass(frozen=True)
class ClassifierReplica:
    """A whole one-label sequence-classification model."""

    model: torch.nn.Module = field(repr=False)
    pad_token_id: int
    type_span: int | None

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def on(self, device: torch.device, *, copied: bool) -> ClassifierReplica:
        model = copy.deepcopy(self.model) if copied else self.model
        return ClassifierReplica(model.to(device), self.pad_token_id, self.type_span)

    def eager_runner(self, description: ModelDescription) -> ModelRunner:
        return ClassifierRunner(self.model, self.pad_token_id, description, self.type_span)

    def runners(
        self,
        description: ModelDescription,
        plan: RunnerPlan,
        options: RunnerOptions,
        probe: Sequence[ProbeRequest],
    ) -> tuple[ModelRunner, PackedRunnerUpgrade | None]:
        """The padded classifier runner; the packed and compiled runners compute Qwen3
        decoders only, so asking for them by name fails, and ``auto`` compiles nothing."""
        if options.named_runner == COMPILED_RUNNER or plan.compile == "foreground":
            raise ModelLoadError(
                f"the {COMPILED_RUNNER} runner and RERANKER_COMPILE=true serve Qwen3 decoders; "
                f"{description.model!r} is a {description.architecture} (serve it with "
                "RERANKER_RUNNER=auto or padded)"
            )
        return self.eager_runner(description), None


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read as far as its configuration and tokenizer."""

    name: str
    revision: str | None
    kind: ModelKind
    architecture: str
    config: Any = field(repr=False)
    encoder: PairEncoder = field(repr=False)
    pad_token_id: int
    type_span: int | None = None
    """Token types are folded into a pair's ids as ``type * type_span + id`` (``text_pairs``);
    None where the model reads none."""

    @property
    def compilable(self) -> bool:
        """Whether the packed runner, and so a compiled one, computes it."""
        return self.kind != "seq-cls"

    def read(self, dtype: torch.dtype) -> Replica:
        """The weights in ``dtype``, on the CPU."""
        if self.kind == "seq-cls":
            model = self._load("AutoModelForSequenceClassification", dtype)
            return ClassifierReplica(model, self.pad_token_id, self.type_span)
        if self.kind == "qwen3-seq-cls":
            classifier = self._load("AutoModelForSequenceClassification", dtype)
            direction = classifier.score.weight[0].float()
            decoder = classifier.model
        else:
            causal_lm = self._load("AutoModelForCausalLM", dtype)
            head = causal_lm.get_output_embeddings().weight
            assert isinstance(self.encoder, PromptEncoder)
            yes, no = _single_token_id(self.encoder, "yes"), _single_token_id(self.encoder, "no")
            direction = head[yes].float() - head[no].float()
            # The decoder only: an untied LM head is vocabulary x hidden of memory never used.
            decoder = causal_lm.get_decoder()
        return DecoderReplica(decoder.eval(), direction, self.pad_token_id)

    def _load(self, auto_class: str, dtype: torch.dtype) -> Any:
        import transformers

        loaded: Any = getattr(transformers, auto_class).from_pretrained(
            self.name,
            revision=self.revision,
            config=self.config,
            dtype=dtype,
            output_loading_info=True,
        )
        model, loading_info = loaded
        missing = [key for key in loading_info.get("missing_keys", []) if key]
        if missing:
            raise ModelLoadError(
                f"{self.name!r} lacks weights {sorted(missing)[:3]}; not a complete "
                f"{self.architecture} checkpoint"
            )
        return model.eval()


def _single_token_id(encoder: PromptEncoder, word: str) -> int:
    token = encoder.single_token_id(word)
    if token is None:
        raise ModelLoadError(f"tokenizer has no single {word!r} token; not a Qwen3 reranker")
    return token


def open_checkpoint(
    name: str, revision: str | None, max_length: int, prompt: PromptChoice = "auto"
) -> Checkpoint:
    """Read the configuration and the tokenizer, and tell which kind of reranker they are;
    ``ModelLoadError`` for anything that is none."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(name, revision=revision)
    architectures = list(getattr(config, "architectures", None) or [])
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{name!r} has no fast tokenizer (tokenizer.json)")
    if config.model_type == "qwen3" and _CAUSAL_ARCHITECTURE in architectures:
        encoder = PromptEncoder.from_pretrained_tokenizer(tokenizer, max_length)
        for word in ("yes", "no"):
            _single_token_id(encoder, word)
        pad = _pad_token_id(tokenizer, config)
        return Checkpoint(name, revision, "qwen3", _CAUSAL_ARCHITECTURE, config, encoder, pad)
    architecture = _classifier_architecture(name, config, architectures)
    if config.pad_token_id is None:
        # A decoder classifier reads its score at the last token before the padding.
        config.pad_token_id = tokenizer.pad_token_id
    pad = _pad_token_id(tokenizer, config)
    if config.model_type == "qwen3" and prompt == "auto" and _has_chat_tokens(tokenizer):
        encoder = PromptEncoder.from_pretrained_tokenizer(tokenizer, max_length)
        return Checkpoint(name, revision, "qwen3-seq-cls", architecture, config, encoder, pad)
    pair_length = _pair_length(config, tokenizer, max_length)
    if pair_length < max_length:
        logger.info(
            "max_length_limited",
            model=name,
            max_length=pair_length,
            requested=max_length,
            reason="the model's position embeddings or tokenizer hold no longer pairs",
        )
    type_span = max(int(config.vocab_size), len(tokenizer))
    pairs = TextPairEncoder.from_pretrained_tokenizer(tokenizer, pair_length, type_span)
    folded = type_span if pairs.token_types is not None else None
    return Checkpoint(name, revision, "seq-cls", architecture, config, pairs, pad, folded)


def _classifier_architecture(name: str, config: Any, architectures: list[str]) -> str:
    import transformers

    classifier = next((a for a in architectures if a.endswith(_CLASSIFIER_SUFFIX)), None)
    if classifier is None:
        raise ModelLoadError(
            f"{name!r} is a {config.model_type} model with architectures {architectures}: "
            f"neither Qwen3-Reranker ({_CAUSAL_ARCHITECTURE}) nor a sequence-classification "
            f"cross-encoder (*{_CLASSIFIER_SUFFIX})"
        )
    if not hasattr(transformers, classifier):
        raise ModelLoadError(
            f"{name!r} needs {classifier}, which this transformers does not have; checkpoints "
            "that need remote code are not served"
        )
    if config.num_labels != 1:
        raise ModelLoadError(
            f"{name!r} has {config.num_labels} output labels; a reranker's classifier has one"
        )
    return classifier


def _has_chat_tokens(tokenizer: Any) -> bool:
    vocabulary = tokenizer.get_vocab()
    return all(token in vocabulary for token in _QWEN3_CHAT_TOKENS)


def _pad_token_id(tokenizer: Any, config: Any) -> int:
    for candidate in (tokenizer.pad_token_id, config.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def _pair_length(config: Any, tokenizer: Any, asked: int) -> int:
    """The most tokens a cross-encoder's pair may have: what was asked, within the tokenizer's
    ``model_max_length`` (which ``CrossEncoder`` cuts at), else the position embeddings."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_LIMIT:
        return min(asked, limit)
    positions = getattr(config, "max_position_embeddings", None)
    if not positions:
        return asked
    if config.model_type in _POSITION_OFFSET_MODELS:
        positions -= int(config.pad_token_id or 0) + 1
    return min(asked, int(positions))
