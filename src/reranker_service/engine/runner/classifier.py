"""The sequence-classification runner: a cross-encoder (BERT, XLM-RoBERTa, ModernBERT, ...,
or a decoder's ``*ForSequenceClassification`` served without a prompt) run whole, as
transformers defines it, on right-padded rows with an attention mask. A pair's raw score is the
model's one logit, which sentence-transformers' ``CrossEncoder`` turns into its score with a
sigmoid.

Every token of an encoder sees every other, so no part of a pair can be computed apart from it:
the runner reads no shared prefix (``reads_prefixes`` is False) and the engine gives it none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from reranker_service.engine.runner.padded import right_padded
from reranker_service.engine.runner.protocol import (
    PassBatch,
    PassShape,
    RunnerKind,
    padded_pass_tokens,
)
from reranker_service.engine.runner.readout import (
    HostScores,
    bind_thread,
    device_memory,
    guarded_pass,
    to_host,
)
from reranker_service.engine.scoring import DeviceMemory, ModelDescription


class ClassifierRunner:
    """A one-label ``*ForSequenceClassification`` model on one device."""

    keeps_prefixes = False
    reads_prefixes = False

    def __init__(
        self,
        model: torch.nn.Module,
        pad_token_id: int,
        description: ModelDescription,
        type_span: int | None = None,
    ) -> None:
        """``type_span``: token types are folded into the ids as ``type * type_span + id``
        (``text_pairs.TokenTypes``); None where the model reads none."""
        self._model = model
        self._pad_token_id = pad_token_id
        self._description = description
        self._type_span = type_span
        self._device = next(model.parameters()).device
        self._asynchronous = self._device.type == "cuda"

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def kind(self) -> RunnerKind:
        return RunnerKind("padded")

    @property
    def overlaps_passes(self) -> bool:
        return self._asynchronous

    def pass_tokens(self, shape: PassShape) -> int:
        return padded_pass_tokens(shape)

    def release(self, prefix_ids: Sequence[int]) -> None:
        """It keeps no prefixes."""

    def memory(self) -> DeviceMemory | None:
        return device_memory(self._device)

    def bind_thread(self) -> None:
        bind_thread(self._device)

    def launch(self, batch: PassBatch) -> HostScores:
        if any(pair.prefix_id is not None for pair in batch.pairs):
            raise ValueError("a sequence-classification runner reads no shared prefixes")
        return guarded_pass(self._device, lambda: self._score([p.tokens for p in batch.pairs]))

    def _score(self, sequences: Sequence[Sequence[int]]) -> HostScores:
        typed_ids, lengths = right_padded(sequences, self._pad_token_id, pin=self._asynchronous)
        width = typed_ids.shape[1]
        attention_mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
        inputs = {"attention_mask": attention_mask}
        if self._type_span is None:
            inputs["input_ids"] = typed_ids
        else:
            # Padding is the pad id, of type 0: it splits into itself.
            inputs["input_ids"] = typed_ids % self._type_span
            inputs["token_type_ids"] = typed_ids // self._type_span
        on_device = {
            name: tensor.to(self._device, non_blocking=True) for name, tensor in inputs.items()
        }
        logits = self._model(**on_device).logits
        return to_host(logits[:, 0].float(), self._device)
