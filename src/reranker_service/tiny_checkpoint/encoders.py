"""Encoder cross-encoder test checkpoints: BERT, XLM-RoBERTa and ModernBERT with a one-logit
sequence-classification head (``num_labels=1``) and random weights, each with its tokenizer
from ``encoder_tokenizers``, written with ``save_pretrained`` and loadable through the Auto
classes without remote code."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from reranker_service.tiny_checkpoint.encoder_tokenizers import (
    byte_level_bpe_tokenizer,
    unigram_tokenizer,
    wordpiece_tokenizer,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerFast

BERT_MAX_LENGTH = 512
"""BERT's and XLM-RoBERTa's longest input, in tokens (``model_max_length``)."""
MODERNBERT_MAX_LENGTH = 8192
"""ModernBERT's longest input, in tokens."""


@dataclass(frozen=True)
class EncoderShape:
    """An encoder cross-encoder's shape; the defaults are the tiny test model's."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    tokenizer_vocab_size: int = 1024
    """The most tokens the tokenizer learns (a small corpus may give it fewer)."""
    model_vocab_size: int | None = None
    """Embedding rows when the model's vocabulary is larger than the tokenizer's (as in the
    published checkpoints, whose vocabularies the tokenizer trained here cannot reach)."""
    initializer_range: float = 0.2
    """Wide for the tiny model, so that two documents' random scores differ visibly."""

    def __post_init__(self) -> None:
        head_dim, remainder = divmod(self.hidden_size, self.num_attention_heads)
        if remainder or head_dim % 2:
            raise ValueError(
                f"hidden size {self.hidden_size} does not split into {self.num_attention_heads} "
                "attention heads of an even size"
            )

    def resized(
        self, num_hidden_layers: int, hidden_size: int, *, tie_word_embeddings: bool = False
    ) -> EncoderShape:
        """This shape with these layers and width (the MLP twice as wide), as the CLI's
        ``--layers``/``--hidden-size`` ask of the tiny one; the number of heads stays. An encoder
        classifier has no LM head whose embeddings could be tied."""
        if tie_word_embeddings:
            raise ValueError("an encoder classifier has no LM head to tie to its embeddings")
        return replace(
            self,
            num_hidden_layers=num_hidden_layers,
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
        )


BERT_BASE = EncoderShape(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    model_vocab_size=30522,
    initializer_range=0.02,
)
"""BERT-base's configuration, random weights."""
XLM_ROBERTA_BASE = EncoderShape(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    model_vocab_size=250002,
    initializer_range=0.02,
)
"""XLM-RoBERTa-base's configuration (bge-reranker-base's), random weights."""


def build_bert(directory: Path, shape: EncoderShape, seed: int) -> Path:
    """Write a random-weight ``BertForSequenceClassification`` and its WordPiece tokenizer."""
    from transformers import BertConfig

    tokenizer = wordpiece_tokenizer(shape.tokenizer_vocab_size, BERT_MAX_LENGTH)
    config = BertConfig(
        **_sizes(shape, tokenizer),
        max_position_embeddings=BERT_MAX_LENGTH,
        type_vocab_size=2,
        pad_token_id=tokenizer.pad_token_id,
        architectures=["BertForSequenceClassification"],
    )
    return _write(directory, config, tokenizer, seed)


def build_xlm_roberta(directory: Path, shape: EncoderShape, seed: int) -> Path:
    """Write a random-weight ``XLMRobertaForSequenceClassification`` and its Unigram tokenizer;
    as the real model's, there is one token type and positions count on from the padding index
    1, so 512 tokens take 514 position embeddings."""
    from transformers import XLMRobertaConfig

    tokenizer = unigram_tokenizer(shape.tokenizer_vocab_size, BERT_MAX_LENGTH)
    config = XLMRobertaConfig(
        **_sizes(shape, tokenizer),
        max_position_embeddings=BERT_MAX_LENGTH + 2,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        architectures=["XLMRobertaForSequenceClassification"],
    )
    return _write(directory, config, tokenizer, seed)


def build_modernbert(directory: Path, shape: EncoderShape, seed: int) -> Path:
    """Write a random-weight ``ModernBertForSequenceClassification`` (mean pooling, as
    gte-reranker-modernbert-base) and its byte-level BPE tokenizer."""
    from transformers import ModernBertConfig

    tokenizer = byte_level_bpe_tokenizer(shape.tokenizer_vocab_size, MODERNBERT_MAX_LENGTH)
    config = ModernBertConfig(
        **_sizes(shape, tokenizer),
        max_position_embeddings=MODERNBERT_MAX_LENGTH,
        classifier_pooling="mean",
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        architectures=["ModernBertForSequenceClassification"],
    )
    return _write(directory, config, tokenizer, seed)


class _SharedSizes(TypedDict):
    """The config fields every encoder kind shares, named as all three configs name them."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    initializer_range: float


def _sizes(shape: EncoderShape, tokenizer: PreTrainedTokenizerFast) -> _SharedSizes:
    return _SharedSizes(
        vocab_size=max(len(tokenizer), shape.model_vocab_size or 0),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        initializer_range=shape.initializer_range,
    )


def _write(
    directory: Path, config: PretrainedConfig, tokenizer: PreTrainedTokenizerFast, seed: int
) -> Path:
    """Random weights for ``config``'s classifier, with one logit, from ``seed``; saved with the
    tokenizer."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config.num_labels = 1
    torch.manual_seed(seed)
    from_config = AutoModelForSequenceClassification.from_config
    model = from_config(config).eval()  # type: ignore[no-untyped-call]
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
