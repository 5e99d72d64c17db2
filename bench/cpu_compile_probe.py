"""Whether compiling the padded forward pays on a CPU: a random Qwen3 decoder of the 0.6B widths
(fewer layers), eager against ``torch.compile(dynamic=True)``, one padded batch shape at a time,
in fp32 and bf16. Measures the decoder alone (no engine, no scoring head).

    python bench/cpu_compile_probe.py                    # 4 layers, hidden 1024
    python bench/cpu_compile_probe.py --layers 2 --shapes 8x200 16x120 32x64

Prints, per format and shape: eager and compiled ms per pass, their ratio, the seconds the first
compiled call took (compile included), and the largest difference in the last hidden state.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import Qwen3Config, Qwen3Model

from timing import ms_per_call


def _pass_ms(forward: Callable[..., object], ids: torch.Tensor, repeats: int) -> float:
    mask = torch.ones_like(ids)
    return ms_per_call(lambda: forward(input_ids=ids, attention_mask=mask), repeats)


def _hidden(model: Callable[..., Any], ids: torch.Tensor) -> torch.Tensor:
    output = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    state: torch.Tensor = output.last_hidden_state
    return state.float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--shapes", nargs="+", default=["8x200", "16x120"], help="rows x tokens")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = Qwen3Config(
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=16,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=1000,
        max_position_embeddings=4096,
    )
    print(f"decoder: {args.layers} layers, hidden {args.hidden}; {torch.get_num_threads()} threads")
    print("| format | rows x tokens | eager ms | compiled ms | eager / compiled "
          "| first compiled call s | max abs diff |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        model: Any = Qwen3Model(config).to(dtype).eval()  # type: ignore[arg-type]
        compiled: Any = torch.compile(model, dynamic=True)
        with torch.inference_mode():
            for shape in args.shapes:
                rows, tokens = (int(part) for part in shape.split("x"))
                ids = torch.randint(0, config.vocab_size, (rows, tokens))
                started = time.perf_counter()
                compiled(input_ids=ids, attention_mask=torch.ones_like(ids))
                first = time.perf_counter() - started
                compiled_ms = _pass_ms(compiled, ids, args.repeats)
                eager_ms = _pass_ms(model, ids, args.repeats)
                difference = (_hidden(compiled, ids) - _hidden(model, ids)).abs().max().item()
                print(f"| {str(dtype).removeprefix('torch.')} | {shape} | {eager_ms:.1f} "
                      f"| {compiled_ms:.1f} | {eager_ms / compiled_ms:.2f} | {first:.0f} "
                      f"| {difference:.2e} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
