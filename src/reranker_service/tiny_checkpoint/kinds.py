"""Every kind of test checkpoint, one row each: the shapes it is built in and how it is written.
A kind without a row fails ``tests/unit/test_test_checkpoints.py``, not a run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar, get_args

from reranker_service.tiny_checkpoint.encoders import (
    BERT_BASE,
    XLM_ROBERTA_BASE,
    EncoderShape,
    build_bert,
    build_modernbert,
    build_xlm_roberta,
)
from reranker_service.tiny_checkpoint.qwen3 import (
    QWEN3_RERANKER_0_6B,
    CheckpointShape,
    build_checkpoint,
)
from reranker_service.tiny_checkpoint.seq_cls import build_seq_cls_checkpoint

CheckpointKind = Literal["qwen3", "qwen3-seq-cls", "bert", "xlm-roberta", "modernbert"]
"""A kind of checkpoint the service serves, by the name ``--kind`` takes."""
CHECKPOINT_KINDS: tuple[CheckpointKind, ...] = get_args(CheckpointKind)
"""Every kind, ``qwen3`` (the default) first."""
TINY = "tiny"
"""The shape every kind has: a couple of layers, built in a second or so."""

ShapeT = TypeVar("ShapeT", CheckpointShape, EncoderShape)


@dataclass(frozen=True)
class KindRecipe(Generic[ShapeT]):
    """How one kind is written: its shapes by name and its builder."""

    shapes: Mapping[str, ShapeT]
    """The shapes by name, ``tiny`` first."""
    build: Callable[[Path, ShapeT, int], Path]
    """Writes the checkpoint of one shape and seed into a directory, and returns it."""

    def shape(
        self,
        name: str,
        *,
        num_hidden_layers: int | None = None,
        hidden_size: int | None = None,
        tie_word_embeddings: bool = False,
    ) -> ShapeT:
        """The shape called ``name``; layers, width and tied embeddings change the tiny shape
        only (another is a published configuration). ValueError names what does not fit."""
        if name not in self.shapes:
            raise ValueError(f"this kind's shapes are {', '.join(self.shapes)}, not {name!r}")
        shape = self.shapes[name]
        if num_hidden_layers is None and hidden_size is None and not tie_word_embeddings:
            return shape
        if name != TINY:
            raise ValueError(f"layers, hidden size and tied embeddings change the {TINY} shape")
        return shape.resized(
            shape.num_hidden_layers if num_hidden_layers is None else num_hidden_layers,
            shape.hidden_size if hidden_size is None else hidden_size,
            tie_word_embeddings=tie_word_embeddings,
        )


def _qwen3_shapes() -> Mapping[str, CheckpointShape]:
    return {TINY: CheckpointShape(), "qwen3-reranker-0.6b": QWEN3_RERANKER_0_6B}


KIND_RECIPES: Mapping[CheckpointKind, KindRecipe[Any]] = MappingProxyType(
    {
        "qwen3": KindRecipe(_qwen3_shapes(), build_checkpoint),
        "qwen3-seq-cls": KindRecipe(_qwen3_shapes(), build_seq_cls_checkpoint),
        "bert": KindRecipe({TINY: EncoderShape(), "base": BERT_BASE}, build_bert),
        "xlm-roberta": KindRecipe(
            {TINY: EncoderShape(), "base": XLM_ROBERTA_BASE}, build_xlm_roberta
        ),
        "modernbert": KindRecipe({TINY: EncoderShape()}, build_modernbert),
    }
)
"""Each kind's recipe, in ``CHECKPOINT_KINDS``' order."""


def build_kind(directory: Path, kind: CheckpointKind, *, shape: str = TINY, seed: int = 0) -> Path:
    """Write a random-weight checkpoint of ``kind`` in the shape called ``shape`` (``tiny``;
    ``qwen3-reranker-0.6b`` for the Qwen3 kinds, ``base`` for BERT and XLM-RoBERTa) into
    ``directory``, and return it. The weights follow from ``seed``: the ``qwen3-seq-cls``
    checkpoint holds the ``qwen3`` one's decoder for the same seed and shape."""
    recipe = KIND_RECIPES[kind]
    return recipe.build(directory, recipe.shape(shape), seed)
