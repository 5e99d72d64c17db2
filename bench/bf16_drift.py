"""How far bf16 scores are from fp32, and how much a pair's bf16 score moves with its batch.

    python bench/bf16_drift.py --model qwen3-reranker-0.6b --device cpu
    python bench/bf16_drift.py --model /path/to/Qwen3-Reranker-0.6B --device cuda

Scores every pair of two requests alone in fp32 and in bf16, then in bf16 (and in fp32, for
contrast) in several batch compositions: all of a request in one padded pass, in length-sorted
passes of 4, with its shared prompt prefix computed once, and interleaved with the other
request's pairs. Prints and writes (``--out``) the largest and mean |bf16 - fp32| and, per
composition, the largest change of a pair's score from its score alone. With random weights
(``qwen3-reranker-0.6b``) scores sit near 0.5, where the sigmoid is steepest, so the figures are
an upper end for score differences of a given logit error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers import AutoTokenizer

from reranker_service.engine.loading import LoadOptions, load_single_device_model
from reranker_service.engine.prefix import shared_prefix
from reranker_service.engine.runner.protocol import PassBatch, PassPair, ServedModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B, build_checkpoint
from workloads import Workload, make_requests

BF16_VS_FP32_BOUND = 0.02
"""What the docs claim of a bf16 score against fp32 (measured on the 0.6B shape, CPU: 0.0087)."""
BF16_BATCH_DRIFT_BOUND = 0.01
"""What the docs claim of a bf16 score across batch compositions (measured: 0.0058)."""

# Documents of 20-250 tokens, so that passes mix lengths (and padding); few, so that the 0.6B
# shape runs on a CPU in minutes.
DRIFT_WORKLOAD = Workload("drift", 8, lambda rng: rng.randint(20, 250), "8 docs of 20-250 tokens")
Pairs = list[list[int]]
Entry = tuple[int, list[int], int]
"""A pair in a pass: its index, its tokens, the length of the prefix it reads (0: none)."""
Composition = Callable[[int], list[list[Entry]]]


def _scores_in(
    model: ServedModel,
    passes: Sequence[Sequence[Entry]],
    count: int,
) -> list[float]:
    """Score ``(index, tokens, prefix)`` entries pass by pass; P(yes) back in index order."""
    scores = [0.0] * count
    runner = model.runner
    for prefix_id, entries in enumerate(passes):
        # A composition's prefix is its request's: one id per pass, computed in it.
        pairs = [
            PassPair(tokens, prefix_id if length else None, length) for _, tokens, length in entries
        ]
        new = frozenset(pair.prefix_id for pair in pairs if pair.prefix_id is not None)
        got = runner.launch(PassBatch(pairs, new)).result()
        runner.release(sorted(new))
        for (index, _, _), logit in zip(entries, got, strict=True):
            scores[index] = probability(logit)
    return scores


def _compositions(requests: Sequence[Pairs]) -> tuple[dict[str, Composition], Composition]:
    """For request ``r``: the passes its pairs are scored in, each entry (pair index, tokens,
    prefix). The other request's pairs ride along only to fill passes."""

    def alone(r: int) -> list[list[Entry]]:
        return [[(i, pair, 0)] for i, pair in enumerate(requests[r])]

    def one_pass(r: int) -> list[list[Entry]]:
        return [[(i, pair, 0) for i, pair in enumerate(requests[r])]]

    def sorted_fours(r: int) -> list[list[Entry]]:
        order = sorted(range(len(requests[r])), key=lambda i: len(requests[r][i]))
        return [[(i, requests[r][i], 0) for i in order[k : k + 4]] for k in range(0, len(order), 4)]

    def shared(r: int) -> list[list[Entry]]:
        prefix = shared_prefix(requests[r])
        return [[(i, pair, prefix) for i, pair in enumerate(requests[r])]]

    def interleaved(r: int) -> list[list[Entry]]:
        other = requests[1 - r]
        passes = []
        for k in range(0, len(requests[r]), 4):
            mine = [(i, requests[r][i], 0) for i in range(k, min(k + 4, len(requests[r])))]
            # Indexes past the request's own are the other request's: dropped from the result.
            theirs = [(len(requests[r]) + j, other[j], 0) for j in range(k, min(k + 4, len(other)))]
            passes.append([entry for pair in zip(mine, theirs, strict=False) for entry in pair])
        return passes

    return {
        "one padded pass": one_pass,
        "length-sorted passes of 4": sorted_fours,
        "shared prefix computed once": shared,
        "interleaved with another request": interleaved,
    }, alone


def measure(checkpoint: str, device: str, max_length: int) -> dict[str, object]:
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = make_requests(tokenizer, DRIFT_WORKLOAD, 2, seed=0)
    models = {
        dtype: load_single_device_model(LoadOptions(checkpoint, None, device, dtype, max_length))
        for dtype in ("float32", "bfloat16")
    }
    requests = [
        models["float32"].encoder.encode(DEFAULT_INSTRUCTION, text.query, text.documents)
        for text in texts
    ]
    compositions, alone = _compositions(requests)
    result: dict[str, object] = {
        "checkpoint": checkpoint,
        "device": device,
        "pairs": sum(len(pairs) for pairs in requests),
        "pair_tokens_mean": round(statistics.mean(len(p) for r in requests for p in r), 1),
    }
    alone_scores: dict[str, list[float]] = {}
    for dtype, model in models.items():
        started = time.perf_counter()
        alone_scores[dtype] = [
            score
            for r, pairs in enumerate(requests)
            for score in _scores_in(model, alone(r), len(pairs) * 2)[: len(pairs)]
        ]
        drifts = {}
        for name, composition in compositions.items():
            scores = [
                score
                for r, pairs in enumerate(requests)
                for score in _scores_in(model, composition(r), len(pairs) * 2)[: len(pairs)]
            ]
            drifts[name] = max(abs(a - b) for a, b in zip(scores, alone_scores[dtype], strict=True))
        result[f"{dtype}_batch_drift_max"] = drifts
        result[f"{dtype}_seconds"] = round(time.perf_counter() - started, 1)
    differences = [
        abs(a - b) for a, b in zip(alone_scores["bfloat16"], alone_scores["float32"], strict=True)
    ]
    result["bf16_vs_fp32_max"] = max(differences)
    result["bf16_vs_fp32_mean"] = statistics.mean(differences)
    result["fp32_score_range"] = [min(alone_scores["float32"]), max(alone_scores["float32"])]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-reranker-0.6b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-length", type=int, default=8192)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.model
        if args.model == "qwen3-reranker-0.6b":
            checkpoint = str(build_checkpoint(Path(scratch) / "0.6b", QWEN3_RERANKER_0_6B))
        elif args.model == "test":
            checkpoint = str(build_checkpoint(Path(scratch) / "test"))
        result = measure(checkpoint, args.device, args.max_length)
    result["model"] = args.model
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
