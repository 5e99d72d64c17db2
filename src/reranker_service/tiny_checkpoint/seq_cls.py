"""Qwen3-Reranker's sequence-classification form, as the published ``*-seq-cls`` conversions
are and as sentence-transformers' ``CrossEncoder``, Infinity and TEI-style servers take it: the
causal model's decoder unchanged, and one score row, ``w_yes - w_no`` of its LM head, so that
the classifier's logit at the last token is the reranker's logit(yes) - logit(no)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reranker_service.tiny_checkpoint.qwen3 import (
    CheckpointShape,
    answer_token_ids,
    build_causal_model,
)

if TYPE_CHECKING:
    from transformers import (
        PreTrainedTokenizerBase,
        Qwen3ForCausalLM,
        Qwen3ForSequenceClassification,
    )


def classifier_from_causal(
    causal: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerBase
) -> Qwen3ForSequenceClassification:
    """A ``Qwen3ForSequenceClassification`` (``num_labels=1``) holding ``causal``'s decoder
    weights and the score row ``w_yes - w_no``; its config names the tokenizer's pad token, which
    the classifier needs to find each row's last token."""
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    yes, no = answer_token_ids(tokenizer)
    config = Qwen3Config.from_dict(causal.config.to_dict())
    config.num_labels = 1
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.pad_token_id = tokenizer.pad_token_id
    classifier: Qwen3ForSequenceClassification
    classifier = Qwen3ForSequenceClassification(config)  # type: ignore[no-untyped-call]
    classifier.model.load_state_dict(causal.model.state_dict())
    head = causal.get_output_embeddings().weight  # type: ignore[no-untyped-call]
    with torch.no_grad():
        classifier.score.weight.copy_((head[yes] - head[no]).unsqueeze(0))
    return classifier


def convert_causal_checkpoint(checkpoint: Path | str, directory: Path | str) -> Path:
    """Write the sequence-classification form of the causal Qwen3 reranker at ``checkpoint``
    (any size: the benchmark converts the 0.6B-shaped one) into ``directory``, with its
    tokenizer, by ``save_pretrained``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    causal = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    if not isinstance(causal, Qwen3ForCausalLM):
        raise ValueError(f"{checkpoint} holds a {type(causal).__name__}, not a Qwen3ForCausalLM")
    return _save(classifier_from_causal(causal, tokenizer), tokenizer, Path(directory))


def build_seq_cls_checkpoint(directory: Path, shape: CheckpointShape, seed: int) -> Path:
    """Write the sequence-classification form of the ``qwen3`` kind's checkpoint for the same
    ``shape`` and ``seed`` (the same decoder weights) into ``directory``."""
    causal, tokenizer = build_causal_model(shape, seed)
    return _save(classifier_from_causal(causal, tokenizer), tokenizer, directory)


def _save(
    classifier: Qwen3ForSequenceClassification,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    classifier.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
