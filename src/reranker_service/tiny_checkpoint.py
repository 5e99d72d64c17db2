"""Build a small, randomly initialised Qwen3 reranker checkpoint on disk.

It is a real ``Qwen3ForCausalLM`` with a real byte-level BPE fast tokenizer (Qwen2 split rules,
chat special tokens, single-token ``yes``/``no``), written with ``save_pretrained`` so the service
loads it through exactly the code path of a hub checkpoint. Random weights: scores are numbers to
compare with a reference computation, not relevance.

    reranker-make-test-model ./test-model
    RERANKER_MODEL=./test-model reranker-service
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Qwen2's pre-tokenizer split rule (from its published tokenizer.json).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_THINK_TOKENS = ["<think>", "</think>"]

_CORPUS_LINES = [
    "Judge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".',
    "<Instruct>: Given a web search query, retrieve relevant passages that answer the query",
    "<Query>: what is the capital of France?",
    "<Document>: Paris is the capital and most populous city of France.",
    "system user assistant yes no yes no yes no",
    "The quick brown fox jumps over the lazy dog. A reranker orders documents by relevance.",
    "Gravity is a force that attracts two bodies towards each other.",
    "Retrieval augmented generation puts a retriever in front of a language model.",
    "Prometheus scrapes metrics; Grafana draws dashboards; the GPU does the work.",
    "Ünïcödé text, 中文文本, русский текст, emoji 🙂 and numbers 0123456789.",
]


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


def _corpus(repeats: int = 40) -> Iterator[str]:
    for _ in range(repeats):
        yield from _CORPUS_LINES


def build_tokenizer(vocab_size: int) -> object:
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
    backend.train_from_iterator(_corpus(), trainer)
    backend.add_tokens([AddedToken(tok, special=False, normalized=False) for tok in _THINK_TOKENS])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=131072,
    )


def build_checkpoint(directory: Path, shape: CheckpointShape | None = None, seed: int = 0) -> Path:
    """Write tokenizer and random ``Qwen3ForCausalLM`` weights to ``directory``."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shape = shape or CheckpointShape()
    tokenizer = build_tokenizer(shape.vocab_size)
    for word in ("yes", "no"):
        ids = tokenizer.encode(word, add_special_tokens=False)  # type: ignore[attr-defined]
        if len(ids) != 1:
            raise RuntimeError(f"tokenizer did not learn {word!r} as one token: {ids}")
    config = Qwen3Config(
        vocab_size=max(len(tokenizer), shape.model_vocab_size or 0),  # type: ignore[arg-type]
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=131072,
        rms_norm_eps=1e-6,
        initializer_range=shape.initializer_range,
        tie_word_embeddings=shape.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
        eos_token_id=tokenizer.eos_token_id,  # type: ignore[attr-defined]
        architectures=["Qwen3ForCausalLM"],
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()  # type: ignore[no-untyped-call]
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)  # type: ignore[attr-defined]
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="reranker-make-test-model",
        description="Write a small random-weight Qwen3 reranker checkpoint for tests and demos.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=CheckpointShape.num_hidden_layers)
    parser.add_argument("--hidden-size", type=int, default=CheckpointShape.hidden_size)
    parser.add_argument("--tie-word-embeddings", action="store_true")
    parser.add_argument(
        "--shape",
        choices=["tiny", "qwen3-reranker-0.6b"],
        default="tiny",
        help="qwen3-reranker-0.6b: the real model's configuration (random weights, ~2.4 GB)",
    )
    args = parser.parse_args(argv)
    # transformers imports torchao, whose import torch answers with deprecation warnings
    # that mean nothing to someone making a test model.
    from reranker_service.observability.logging import drop_import_noise

    drop_import_noise()
    shape = CheckpointShape(
        num_hidden_layers=args.layers,
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        tie_word_embeddings=args.tie_word_embeddings,
    )
    if args.shape == "qwen3-reranker-0.6b":
        shape = QWEN3_RERANKER_0_6B
    path = build_checkpoint(args.directory, shape, seed=args.seed)
    print(f"wrote test checkpoint to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
