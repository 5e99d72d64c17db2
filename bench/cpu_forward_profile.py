"""Where a CPU forward pass of the 0.6B shape spends its time, per operator, in each format.

    python bench/cpu_forward_profile.py                         # 8 rows of 256 tokens
    python bench/cpu_forward_profile.py --rows 16 --tokens 128 --dtypes float32 bfloat16

Builds the decoder of the published Qwen3-Reranker-0.6B configuration with random weights (the
served backbone: transformers' ``Qwen3Model``), runs the same right-padded batch through it in
each format under ``torch.profiler``, and prints one markdown table: each operator's share of
the pass and its milliseconds per pass, formats side by side, and the whole pass's ratio. What
bf16 gains on the matrix products and loses elsewhere shows here, before any change is made.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import Qwen3Config, Qwen3Model

from reranker_service.tiny_checkpoint import QWEN3_RERANKER_0_6B
from timing import ms_per_call

VOCABULARY = 4096
"""The embedding lookup costs nothing at any vocabulary size."""


def decoder_of_0_6b_widths(
    dtype: torch.dtype, layers: int, attention: str = "sdpa"
) -> torch.nn.Module:
    """transformers' ``Qwen3Model`` in the published 0.6B configuration but for its layer count
    and vocabulary, random weights, in ``dtype``."""
    shape = QWEN3_RERANKER_0_6B
    config = Qwen3Config(
        vocab_size=VOCABULARY,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        head_dim=shape.head_dim,
        attn_implementation=attention,
    )
    torch.manual_seed(0)
    return Qwen3Model(config).to(dtype).eval()


def _profile(
    model: torch.nn.Module, input_ids: torch.Tensor, passes: int
) -> tuple[float, dict[str, float]]:
    """Milliseconds per pass (timed without the profiler), and each operator's self time per
    pass in milliseconds (with it)."""
    with torch.inference_mode():
        per_pass = ms_per_call(
            lambda: model(input_ids=input_ids, use_cache=False), passes, warm_ups=2
        )
        with profile(activities=[ProfilerActivity.CPU]) as profiler:
            for _ in range(passes):
                model(input_ids=input_ids, use_cache=False)
    by_operator: dict[str, float] = defaultdict(float)
    for event in profiler.key_averages():
        by_operator[event.key] += event.self_cpu_time_total / 1000 / passes
    return per_pass, dict(by_operator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--layers", type=int, default=QWEN3_RERANKER_0_6B.num_hidden_layers)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()

    input_ids = torch.randint(0, VOCABULARY, (args.rows, args.tokens))
    results = {}
    for name in args.dtypes:
        model = decoder_of_0_6b_widths(getattr(torch, name), args.layers)
        results[name] = _profile(model, input_ids, args.passes)
        del model
    first = args.dtypes[0]
    operators = sorted(results[first][1], key=lambda key: -results[first][1][key])[: args.top]
    last = args.dtypes[-1]
    extra = [key for key in results[last][1] if key not in operators]
    operators += sorted(extra, key=lambda key: -results[last][1][key])[:4]

    print(
        f"{args.rows} rows x {args.tokens} tokens, {args.layers} layers, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}\n"
    )
    print("| operator | " + " | ".join(f"{name} ms (share)" for name in args.dtypes) + " |")
    print("|---|" + "---|" * len(args.dtypes))
    for key in operators:
        cells = []
        for name in args.dtypes:
            _, by_operator = results[name]
            total = sum(by_operator.values())
            ms = by_operator.get(key, 0.0)
            cells.append(f"{ms:.1f} ({ms / total:.0%})")
        print(f"| `{key}` | " + " | ".join(cells) + " |")
    print(
        "| **pass (unprofiled)** | "
        + " | ".join(f"**{results[name][0]:.1f}**" for name in args.dtypes)
        + " |"
    )
    for name in args.dtypes[1:]:
        print(f"\n{first} / {name} pass time: {results[first][0] / results[name][0]:.2f}x")


if __name__ == "__main__":
    main()
