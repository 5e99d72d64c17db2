"""The Qwen3 reranker test checkpoint: a real ``Qwen3ForCausalLM`` with random weights and a
real byte-level BPE fast tokenizer (Qwen2 split rules, chat special tokens, single-token
``yes``/``no``), as the service serves Qwen3-Reranker. Its output for a seed and shape is fixed:
tests compare scores of these exact weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from reranker_service.tiny_checkpoint.corpus import QWEN3_LINES, repeated

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen3ForCausalLM

# Qwen2's pre-tokenizer split rule (from its published tokenizer.json).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_THINK_TOKENS = ["<think>", "</think>"]
_CORPUS_REPEATS = 40
QWEN3_MAX_LENGTH = 131072
"""The tokenizer's ``model_max_length`` and the config's positions, as the real model's."""


@dataclass(frozen=True)
class CheckpointShape:
    """A Qwen3 reranker's shape; the defaults are the tiny test model's."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    vocab_size: int = 1024
    tie_word_embeddings: bool = False
    initializer_range: float = 0.08
    model_vocab_size: int | None = None
    """Embedding rows when the model's vocabulary is larger than the tokenizer's (as in the real
    Qwen3 checkpoints); the size of the LM head matters for the model-card baseline's speed."""

    def resized(
        self, num_hidden_layers: int, hidden_size: int, *, tie_word_embeddings: bool = False
    ) -> CheckpointShape:
        """This shape with these layers and width (the MLP twice as wide), as the CLI's
        ``--layers``/``--hidden-size`` ask of the tiny one; the attention heads keep their size."""
        return replace(
            self,
            num_hidden_layers=num_hidden_layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            tie_word_embeddings=tie_word_embeddings,
        )


QWEN3_RERANKER_0_6B = CheckpointShape(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
    initializer_range=0.02,
    model_vocab_size=151669,
)
"""The published Qwen3-Reranker-0.6B configuration; with random weights it runs at the real
model's speed."""


def build_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Qwen's split rules, wrapped as a transformers fast one."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(_THINK_TOKENS),
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(repeated(QWEN3_LINES, _CORPUS_REPEATS), trainer)
    backend.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in _THINK_TOKENS])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=QWEN3_MAX_LENGTH,
    )


def answer_token_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """The ids of ``yes`` and ``no``, each of which must be one token."""
    ids: list[int] = []
    for word in ("yes", "no"):
        encoded = tokenizer.encode(word, add_special_tokens=False)
        if len(encoded) != 1:
            raise RuntimeError(f"tokenizer did not learn {word!r} as one token: {encoded}")
        ids.append(encoded[0])
    return ids[0], ids[1]


def build_causal_model(
    shape: CheckpointShape, seed: int
) -> tuple[Qwen3ForCausalLM, PreTrainedTokenizerFast]:
    """The random-weight ``Qwen3ForCausalLM`` (fp32, eval mode) and its tokenizer, in memory:
    the weights follow from ``seed`` and ``shape`` alone."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tokenizer(shape.vocab_size)
    answer_token_ids(tokenizer)
    config = Qwen3Config(
        vocab_size=max(len(tokenizer), shape.model_vocab_size or 0),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=QWEN3_MAX_LENGTH,
        rms_norm_eps=1e-6,
        initializer_range=shape.initializer_range,
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    return model, tokenizer


def build_checkpoint(directory: Path, shape: CheckpointShape | None = None, seed: int = 0) -> Path:
    """Write tokenizer and random ``Qwen3ForCausalLM`` weights to ``directory``."""
    model, tokenizer = build_causal_model(shape or CheckpointShape(), seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
