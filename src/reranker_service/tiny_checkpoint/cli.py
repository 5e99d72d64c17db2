"""``reranker-make-test-model``: write one random-weight test checkpoint of a kind and shape."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from reranker_service.tiny_checkpoint.kinds import CHECKPOINT_KINDS, KIND_RECIPES, TINY


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    shape_names = [
        *dict.fromkeys(name for recipe in KIND_RECIPES.values() for name in recipe.shapes)
    ]
    parser = argparse.ArgumentParser(
        prog="reranker-make-test-model",
        description="Write a small random-weight reranker checkpoint for tests, demos and "
        "benchmarks: a Qwen3 reranker (causal or sequence-classification form) or an encoder "
        "cross-encoder.",
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument(
        "--kind",
        choices=CHECKPOINT_KINDS,
        default=CHECKPOINT_KINDS[0],
        help="qwen3: Qwen3-Reranker as a causal LM (the default); qwen3-seq-cls: its "
        "sequence-classification form; bert, xlm-roberta, modernbert: cross-encoders",
    )
    parser.add_argument(
        "--shape",
        choices=shape_names,
        default=TINY,
        help="tiny: a couple of layers (every kind); qwen3-reranker-0.6b: the real model's "
        "configuration (qwen3 kinds, ~2.4 GB); base: BERT-base or XLM-RoBERTa-base "
        "(bert, xlm-roberta)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=_positive, help="layers of the tiny shape (2)")
    parser.add_argument("--hidden-size", type=_positive, help="width of the tiny shape (64)")
    parser.add_argument(
        "--tie-word-embeddings", action="store_true", help="tiny qwen3 kinds: tie the LM head"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    recipe = KIND_RECIPES[args.kind]
    try:
        shape = recipe.shape(
            args.shape,
            num_hidden_layers=args.layers,
            hidden_size=args.hidden_size,
            tie_word_embeddings=args.tie_word_embeddings,
        )
    except ValueError as error:
        parser.error(f"--kind {args.kind} --shape {args.shape}: {error}")
    # transformers imports torchao, whose import torch answers with deprecation warnings
    # that mean nothing to someone making a test model.
    from reranker_service.observability.logging import drop_import_noise

    drop_import_noise()
    path = recipe.build(args.directory, shape, args.seed)
    print(f"wrote test checkpoint to {path}")
    return 0
