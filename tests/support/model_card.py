"""The Qwen3-Reranker model card's scoring, written out plainly as the reference: full LM head,
left padding, log-softmax over the no/yes logits. Shares no code with the service."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


class ModelCardReranker:
    def __init__(self, checkpoint: Path, max_length: int) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
        self.max_length = max_length
        self.prefix_tokens = self.tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")

    @staticmethod
    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = CARD_INSTRUCTION
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def process_inputs(self, pairs: list[str]) -> BatchEncoding:
        inputs = self.tokenizer(
            pairs,
            padding=False,
            truncation="longest_first",
            return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(
            inputs, padding=True, return_tensors="pt", max_length=self.max_length
        )

    @torch.no_grad()
    def compute_logits(self, inputs: BatchEncoding) -> list[float]:
        batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    @torch.no_grad()
    def logit_differences(self, inputs: BatchEncoding) -> list[float]:
        """logit(yes) - logit(no) at the last position: what ``raw_scores`` returns."""
        last = self.model(**inputs).logits[:, -1, :]
        differences: list[float] = (
            last[:, self.token_true_id] - last[:, self.token_false_id]
        ).tolist()
        return differences

    def raw_alone(self, instruction: str | None, query: str, documents: list[str]) -> list[float]:
        """``score_alone``'s pairs, each pair's logit difference."""
        return self._each_alone(instruction, query, documents, self.logit_differences)

    def token_count(self, instruction: str | None, query: str, doc: str) -> int:
        inputs = self.process_inputs([self.format_instruction(instruction, query, doc)])
        return int(inputs["input_ids"].shape[1])

    def score_alone(self, instruction: str | None, query: str, documents: list[str]) -> list[float]:
        """Each pair in its own batch of one, exactly as the card's example would run it."""
        return self._each_alone(instruction, query, documents, self.compute_logits)

    def _each_alone(
        self,
        instruction: str | None,
        query: str,
        documents: list[str],
        compute: Callable[[BatchEncoding], list[float]],
    ) -> list[float]:
        scores = []
        for doc in documents:
            pair = self.format_instruction(instruction, query, doc)
            scores.extend(compute(self.process_inputs([pair])))
        return scores
