"""The right-padded runner: each pair one row of a ``[pairs, longest]`` pass through
transformers' Qwen3 decoder, a request's shared prefix computed once and read from its cached
keys and values.

Only the decoder runs: a pair's raw score is ``h · (w_yes - w_no)`` with ``h`` the final hidden
state of its last real token, which is ``logit(yes) - logit(no)`` without computing the other
~150k vocabulary logits; its sigmoid is the model card's softmax over the two.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence

import torch
from transformers import DynamicCache

from reranker_service.engine.runner.protocol import (
    PassBatch,
    PassPair,
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

KeysValues = list[tuple[torch.Tensor, torch.Tensor]]
"""Per decoder layer, the keys and values of a sequence: ``[1, kv_heads, tokens, head_dim]``."""


def right_padded(
    rows: Sequence[Sequence[int]], pad_token_id: int, *, pin: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one right-padded ``[rows, longest]`` id tensor, built in one scatter, and
    their lengths; in page-locked memory with ``pin``, so that copying them to the GPU does not
    wait for the device."""
    lengths = torch.tensor([len(row) for row in rows], dtype=torch.long)
    width = int(lengths.max())
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, pin_memory=pin)
    real = torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)
    input_ids[real] = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.long)
    return input_ids, lengths.pin_memory() if pin else lengths


def _rows_of(
    blocks: Sequence[torch.Tensor], row_slots: torch.Tensor, width: int, *, one_for_all: bool
) -> torch.Tensor:
    """One ``[rows, heads, width, head_dim]`` tensor whose row i holds ``blocks[row_slots[i]]``
    (``[1, heads, tokens, head_dim]``) left-aligned; a slot past the blocks is empty. With
    ``one_for_all`` (every row reads the one block) it is a view, no copy."""
    first = blocks[0]
    if one_for_all:
        return first.expand(len(row_slots), -1, -1, -1)
    slots = first.new_zeros((len(blocks) + 1, first.shape[1], width, first.shape[3]))
    for slot, block in enumerate(blocks):
        slots[slot, :, : block.shape[2]] = block[0]
    return slots.index_select(0, row_slots)


class PaddedRunner:
    """A Qwen3 decoder plus the yes-minus-no direction of its LM head, run on right-padded
    rows: the ``ModelRunner`` of the CPU."""

    keeps_prefixes = True
    reads_prefixes = True

    def __init__(
        self,
        backbone: torch.nn.Module,
        score_direction: torch.Tensor,
        pad_token_id: int,
        description: ModelDescription,
    ) -> None:
        self._backbone = backbone
        self._score_direction = score_direction
        self._pad_token_id = pad_token_id
        self._device = score_direction.device
        self._description = description
        # A GPU computes asynchronously: host buffers are pinned, nothing in a pass may read a
        # device value on the host before its scores, and every pass takes a full mask.
        self._asynchronous = self._device.type == "cuda"
        self._full_masks = self._asynchronous
        self._dtype = next(backbone.parameters()).dtype
        # Newer transformers call the decoder's cache argument and output field "cache" (the
        # older "past_key_values" warns); take whichever this release has.
        parameters = inspect.signature(backbone.forward).parameters
        self._cache_name = "cache" if "cache" in parameters else "past_key_values"
        self._prefixes: dict[int, KeysValues] = {}
        """Keys and values of the prefixes the scheduler has not released, by prefix id."""

    @property
    def description(self) -> ModelDescription:
        return self._description

    @property
    def kind(self) -> RunnerKind:
        return RunnerKind("padded")

    @property
    def overlaps_passes(self) -> bool:
        return self._asynchronous

    @property
    def held_prefixes(self) -> frozenset[int]:
        """The prefix ids whose keys and values this runner keeps."""
        return frozenset(self._prefixes)

    def pass_tokens(self, shape: PassShape) -> int:
        return padded_pass_tokens(shape)

    def release(self, prefix_ids: Sequence[int]) -> None:
        for prefix_id in prefix_ids:
            self._prefixes.pop(prefix_id, None)

    def memory(self) -> DeviceMemory | None:
        return device_memory(self._device)

    def bind_thread(self) -> None:
        bind_thread(self._device)

    def launch(self, batch: PassBatch) -> HostScores:
        """Rows with a prefix run only their tokens after it, attending to its cached keys and
        values (computed first, in one pass, for the batch's new prefixes). On a GPU this
        returns once the pass is queued, and the host is free to prepare the next one; on the
        CPU the pass has run by then."""
        return guarded_pass(self._device, lambda: self._run(batch))

    def _run(self, batch: PassBatch) -> HostScores:
        if any(pair.prefix_id is not None for pair in batch.pairs):
            computed = self._compute_prefixes(batch)
            pending = self._score_after_prefixes(batch.pairs, computed)
            # Kept only once the whole pass is queued: a failed pass keeps none.
            self._prefixes.update(computed)
            return pending
        return self._score([pair.tokens for pair in batch.pairs])

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self._device, non_blocking=True)

    def _score(self, sequences: Sequence[Sequence[int]]) -> HostScores:
        input_ids, lengths = right_padded(sequences, self._pad_token_id, pin=self._asynchronous)
        device_lengths = self._to_device(lengths)
        hidden = self._backbone(
            input_ids=self._to_device(input_ids),
            attention_mask=self._attention_mask(device_lengths, input_ids.shape[1]),
            use_cache=False,
        ).last_hidden_state
        return self._scores_at(hidden, device_lengths - 1)

    def _attention_mask(self, device_lengths: torch.Tensor, width: int) -> torch.Tensor | None:
        """What right-padded rows need besides causality: nothing, since a real token only
        sees the tokens before it, all real, and what padding positions compute is never read.
        So on the CPU no mask is passed, and attention takes its causal kernel, which on rows
        of thousands of tokens is about three times faster than a masked one. On a GPU a full
        causal mask is built on the device: without one, transformers reads the position ids
        on the host to detect packed sequences, a sync per pass that would stall the
        pipeline."""
        if not self._full_masks:
            return None
        no_prefix = torch.zeros_like(device_lengths)
        return self._prefix_mask(no_prefix, 0, device_lengths, width)

    def _scores_at(self, hidden: torch.Tensor, last_index: torch.Tensor) -> HostScores:
        """Each row's score at its last real token, on its way to the host."""
        rows = torch.arange(hidden.shape[0], device=self._device)
        return to_host(hidden[rows, last_index].float() @ self._score_direction, self._device)

    def _compute_prefixes(self, batch: PassBatch) -> dict[int, KeysValues]:
        """The keys and values of the batch's new prefixes, in one right-padded pass, by prefix
        id. Each keeps views of its own row: valid, since a causal pass's first tokens never see
        the padding after them."""
        tokens: dict[int, Sequence[int]] = {}
        for pair in batch.pairs:
            if pair.prefix_id in batch.new_prefixes and pair.prefix_id not in tokens:
                tokens[pair.prefix_id] = pair.tokens[: pair.prefix_length]
        if not tokens:
            return {}
        input_ids, lengths = right_padded(
            list(tokens.values()), self._pad_token_id, pin=self._asynchronous
        )
        output = self._backbone(
            input_ids=self._to_device(input_ids),
            attention_mask=self._attention_mask(self._to_device(lengths), input_ids.shape[1]),
            use_cache=True,
        )
        layers = [(layer.keys, layer.values) for layer in getattr(output, self._cache_name).layers]
        return {
            prefix_id: [
                (keys[row : row + 1, :, : len(prefix)], values[row : row + 1, :, : len(prefix)])
                for keys, values in layers
            ]
            for row, (prefix_id, prefix) in enumerate(tokens.items())
        }

    def _score_after_prefixes(
        self, pairs: Sequence[PassPair], computed: dict[int, KeysValues]
    ) -> HostScores:
        """Rows continue after their request's cached prefix: their own tokens are right-padded,
        take positions that follow the prefix, and attend to their own prefix (left-aligned in
        a shared key block, the rest masked) and causally to their own tokens."""
        slot_of: dict[int, int] = {}
        states: list[KeysValues] = []
        for pair in pairs:
            if pair.prefix_id is not None and pair.prefix_id not in slot_of:
                slot_of[pair.prefix_id] = len(states)
                held = computed.get(pair.prefix_id) or self._prefixes.get(pair.prefix_id)
                if held is None:
                    raise KeyError(f"prefix {pair.prefix_id} is neither held nor new in the pass")
                states.append(held)
        skipped = [pair.prefix_length for pair in pairs]
        own_ids, own_lengths = right_padded(
            [pair.tokens[pair.prefix_length :] for pair in pairs],
            self._pad_token_id,
            pin=self._asynchronous,
        )
        longest_prefix = max(skipped)
        # Decided here, on the host: checking row_slots per layer would sync the device.
        one_for_all = len(states) == 1 and all(pair.prefix_id is not None for pair in pairs)
        # Rows without a prefix read the empty slot after the distinct prefixes. One host
        # buffer carries each row's slot and prefix length to the device.
        row_facts = torch.tensor(
            [
                [
                    slot_of[pair.prefix_id] if pair.prefix_id is not None else len(states)
                    for pair in pairs
                ],
                skipped,
            ],
            dtype=torch.long,
        )
        row_slots, prefix_lengths = self._to_device(
            row_facts.pin_memory() if self._asynchronous else row_facts
        )

        def rows_of(layer: int, part: int) -> torch.Tensor:
            blocks = [state[layer][part] for state in states]
            return _rows_of(blocks, row_slots, longest_prefix, one_for_all=one_for_all)

        cache = DynamicCache(
            ddp_cache_data=[
                (rows_of(layer, 0), rows_of(layer, 1)) for layer in range(len(states[0]))
            ]
        )
        width = own_ids.shape[1]
        device_own_lengths = self._to_device(own_lengths)
        positions = prefix_lengths.unsqueeze(1) + torch.arange(width, device=self._device)
        hidden = self._backbone(
            input_ids=self._to_device(own_ids),
            attention_mask=self._prefix_mask(
                prefix_lengths, longest_prefix, device_own_lengths, width
            ),
            position_ids=positions,
            use_cache=True,
            **{self._cache_name: cache},
        ).last_hidden_state
        return self._scores_at(hidden, device_own_lengths - 1)

    def _prefix_mask(
        self,
        prefix_lengths: torch.Tensor,
        key_prefix: int,
        own_lengths: torch.Tensor,
        width: int,
    ) -> torch.Tensor:
        """``[rows, 1, own tokens, key_prefix + own tokens]``, additive, built on the device:
        row i's token t sees its prefix's first ``prefix_lengths[i]`` keys and its own tokens
        up to t."""
        keys = torch.arange(key_prefix + width, device=self._device).view(1, 1, -1)
        own_key = keys - key_prefix
        query = torch.arange(width, device=self._device).view(1, -1, 1)
        sees_prefix = keys < prefix_lengths.view(-1, 1, 1)
        sees_own = (own_key >= 0) & (own_key <= query) & (own_key < own_lengths.view(-1, 1, 1))
        blocked = ~(sees_prefix | sees_own)
        mask = torch.zeros(blocked.shape, dtype=self._dtype, device=self._device)
        mask.masked_fill_(blocked, torch.finfo(self._dtype).min)
        return mask.unsqueeze(1)
