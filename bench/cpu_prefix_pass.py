"""What a pass after a shared prefix costs on a CPU, against the same pairs computed whole.

    python bench/cpu_prefix_pass.py                        # 0.6B shape, bf16, 20 pairs
    python bench/cpu_prefix_pass.py --dtype float32 --layers 4 --profile

The padded runner (the CPU's) on a random decoder of the 0.6B widths: one request's pairs,
a prompt prefix of ``--prefix`` tokens and documents of ``--own`` tokens each after it, scored
(1) whole, every pair computing its prefix again, one right-padded pass with no mask (attention
takes its causal kernel), and (2) after the prefix, which the runner holds (as it does between
a request's passes): each row computes only its own tokens, attending to the prefix's cached
keys and values through an explicit mask. Prints each one's milliseconds per pass, the tokens
it computes and its milliseconds per computed token; ``--profile`` adds the operators of (2)
that cost the most. Reuse pays only when (2)'s time per computed token stays near (1)'s.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from cpu_forward_profile import VOCABULARY, decoder_of_0_6b_widths
from reranker_service.engine.runner.padded import PaddedRunner
from reranker_service.engine.runner.protocol import PassBatch, PassPair
from reranker_service.engine.scoring import ModelDescription
from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B
from timing import ms_per_call

PREFIX_ID = 1
"""The one request's prefix, as the scheduler would number it."""


def _runner(dtype: torch.dtype, layers: int, attention: str = "sdpa") -> PaddedRunner:
    backbone = decoder_of_0_6b_widths(dtype, layers, attention)
    direction = torch.randn(QWEN3_RERANKER_0_6B.hidden_size)  # the runner scores in fp32
    name = str(dtype).removeprefix("torch.")
    description = ModelDescription("probe", "local", "cpu", name, 8192, 0.0)
    return PaddedRunner(backbone, direction, 0, description)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--layers", type=int, default=QWEN3_RERANKER_0_6B.num_hidden_layers)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--prefix", type=int, default=77)
    parser.add_argument("--own", type=int, default=75)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--attention", default="sdpa", help="transformers' attn_implementation (sdpa, eager)"
    )
    args = parser.parse_args()

    runner = _runner(getattr(torch, args.dtype), args.layers, args.attention)
    generator = torch.Generator().manual_seed(1)
    prefix = torch.randint(1, VOCABULARY, (args.prefix,), generator=generator).tolist()
    sequences = [
        prefix + torch.randint(1, VOCABULARY, (args.own,), generator=generator).tolist()
        for _ in range(args.pairs)
    ]
    whole = PassBatch.of(sequences)
    after = PassBatch([PassPair(tokens, PREFIX_ID, args.prefix) for tokens in sequences])
    # The runner computes and holds the prefix once, as for a request's first pass.
    runner.launch(PassBatch(after.pairs, frozenset({PREFIX_ID}))).result()

    whole_ms = ms_per_call(lambda: runner.launch(whole).result(), args.repeats)
    after_ms = ms_per_call(lambda: runner.launch(after).result(), args.repeats)
    whole_tokens = args.pairs * (args.prefix + args.own)
    after_tokens = args.pairs * args.own
    print(
        f"{args.pairs} pairs of a {args.prefix}-token prefix and {args.own} own tokens, "
        f"{args.layers} layers, {args.dtype}, {args.attention} attention, "
        f"{torch.get_num_threads()} threads\n"
    )
    print("| pass | ms | tokens computed | ms per computed token |")
    print("|---|---:|---:|---:|")
    print(f"| whole pairs | {whole_ms:.1f} | {whole_tokens} | {whole_ms / whole_tokens:.3f} |")
    print(
        f"| after the held prefix | {after_ms:.1f} | {after_tokens} | "
        f"{after_ms / after_tokens:.3f} |"
    )
    print(f"\nreuse speed-up of the pass: {whole_ms / after_ms:.2f}x "
          f"(tokens alone: {whole_tokens / after_tokens:.2f}x)")  # fmt: skip

    if args.profile:
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as profiler:
            runner.launch(after).result()
        by_operator: dict[str, float] = defaultdict(float)
        for event in profiler.key_averages():
            by_operator[event.key] += event.self_cpu_time_total / 1000
        total = sum(by_operator.values())
        print("\n| operator (after the prefix) | ms | share |\n|---|---:|---:|")
        for key, ms in sorted(by_operator.items(), key=lambda item: -item[1])[:12]:
            print(f"| `{key}` | {ms:.1f} | {ms / total:.0%} |")


if __name__ == "__main__":
    main()
