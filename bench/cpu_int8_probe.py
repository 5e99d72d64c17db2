"""Can int8 pay on this CPU? The 0.6B shape's MLP (gate, up, down) in every way torch offers.

    python bench/cpu_int8_probe.py                    # 512 tokens, hidden 1024, MLP 3072
    python bench/cpu_int8_probe.py --tokens 2048

Times the Qwen3 MLP block (``down(silu(gate(x)) * up(x))``, three fifths of a layer's
weights) at the 0.6B widths in: fp32 and bf16 eager (oneDNN's best GEMMs for each), int8 as
the service served it (torchao's dynamic int8 activations and weights, eager), the same
compiled, and PT2E quantization with the x86 inductor quantizer (dynamic, compiled): the path
that lowers to oneDNN's VNNI/AMX int8 kernels. Each variant also reports its largest output
difference from fp32 relative to the output's scale. Prints one markdown table; a variant that
fails prints why instead of a figure.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch
from torch.nn import functional

from timing import ms_per_call


class Mlp(torch.nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = torch.nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(functional.silu(self.gate_proj(x)) * self.up_proj(x))


def _time(run: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        return ms_per_call(lambda: run(x), repeats, warm_ups=3)


def _torchao_int8(model: torch.nn.Module) -> torch.nn.Module:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8DynamicActivationInt8WeightConfig())
    return quantized


def _pt2e_int8(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_dynamic=True))
    tokens = torch.export.Dim("tokens", min=2, max=65536)
    exported = torch.export.export(
        copy.deepcopy(model), (x,), dynamic_shapes=({0: tokens},)
    ).module()
    prepared = prepare_pt2e(exported, quantizer)  # type: ignore[arg-type]
    with torch.no_grad():
        prepared(x)
    return convert_pt2e(prepared)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    torch.manual_seed(0)
    fp32 = Mlp(args.hidden, args.intermediate).eval()
    x = torch.randn(args.tokens, args.hidden)
    with torch.inference_mode():
        expected = fp32(x)
    scale = expected.abs().max().item()

    variants: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
        "fp32, eager": lambda: fp32,
        "bf16, eager": lambda: (lambda m: lambda t: m(t.bfloat16()))(
            copy.deepcopy(fp32).bfloat16()
        ),
        "bf16, compiled": lambda: (lambda m: lambda t: m(t.bfloat16()))(
            torch.compile(copy.deepcopy(fp32).bfloat16(), dynamic=True)
        ),
        "int8 torchao dynamic, eager (as served)": lambda: _torchao_int8(fp32),
        "int8 torchao dynamic, compiled": lambda: torch.compile(_torchao_int8(fp32), dynamic=True),
        "int8 PT2E x86 inductor (dynamic), compiled": lambda: torch.compile(
            _pt2e_int8(fp32, x), dynamic=True
        ),
    }
    rows: list[tuple[str, float | None, float | None, str]] = []
    for name, build in variants.items():
        try:
            run = build()
            ms = _time(run, x, args.repeats)
            with torch.inference_mode():
                error = (run(x).float() - expected).abs().max().item() / scale
            rows.append((name, ms, error, ""))
        except Exception as exc:  # a variant this torch cannot build is reported, not fatal
            rows.append((name, None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"))

    bf16_ms = next(ms for name, ms, _, _ in rows if name == "bf16, eager")
    if bf16_ms is None:
        raise SystemExit(f"bf16 itself failed on this CPU: {rows[1][3]}")
    print(
        f"MLP {args.hidden}->{args.intermediate}->{args.hidden}, {args.tokens} tokens, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}\n"
    )
    print("| variant | ms per call | vs bf16 eager | max error / output scale |")
    print("|---|---:|---:|---:|")
    for name, ms, error, failure in rows:
        if ms is None or error is None:
            print(f"| {name} | failed: {failure[:120]} | | |")
        else:
            print(f"| {name} | {ms:.2f} | {bf16_ms / ms:.2f}x | {error:.4f} |")


if __name__ == "__main__":
    main()
