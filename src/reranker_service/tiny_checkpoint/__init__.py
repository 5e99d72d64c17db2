"""Small, randomly initialised reranker checkpoints on disk, one of each kind the service
serves, for tests, demos and benchmarks.

Each is a real transformers model with a real fast tokenizer trained here, written with
``save_pretrained`` so that the service loads it through exactly the code path of a hub
checkpoint; random weights, so scores are numbers to compare with a reference computation, not
relevance. Importing this package imports neither torch nor transformers.

    reranker-make-test-model ./test-model                    # qwen3: Qwen3-Reranker, causal LM
    reranker-make-test-model ./bert --kind bert --shape base
    RERANKER_MODEL=./test-model reranker-service

Modules: ``corpus`` (training text), ``qwen3`` (the causal Qwen3 reranker), ``seq_cls`` (its
sequence-classification form), ``encoder_tokenizers`` and ``encoders`` (BERT, XLM-RoBERTa,
ModernBERT cross-encoders), ``kinds`` (the registry of kinds and shapes), ``cli``.
"""

from reranker_service.tiny_checkpoint.cli import main
from reranker_service.tiny_checkpoint.encoders import BERT_BASE, XLM_ROBERTA_BASE, EncoderShape
from reranker_service.tiny_checkpoint.kinds import (
    CHECKPOINT_KINDS,
    KIND_RECIPES,
    CheckpointKind,
    build_kind,
)
from reranker_service.tiny_checkpoint.qwen3 import (
    QWEN3_RERANKER_0_6B,
    CheckpointShape,
    build_checkpoint,
    build_tokenizer,
)
from reranker_service.tiny_checkpoint.seq_cls import (
    build_seq_cls_checkpoint,
    convert_causal_checkpoint,
)

__all__ = [
    "BERT_BASE",
    "CHECKPOINT_KINDS",
    "KIND_RECIPES",
    "QWEN3_RERANKER_0_6B",
    "XLM_ROBERTA_BASE",
    "CheckpointKind",
    "CheckpointShape",
    "EncoderShape",
    "build_checkpoint",
    "build_kind",
    "build_seq_cls_checkpoint",
    "build_tokenizer",
    "convert_causal_checkpoint",
    "main",
]
