"""What torch dispatches on this CPU for the serving shapes: which oneDNN kernels (AMX,
AVX512-BF16, VNNI or plain AVX512/AVX2) a linear layer of the 0.6B shape runs in each number
format, and what it takes per call.

    python bench/cpu_dispatch.py                      # 0.6B widths (hidden 1024, MLP 3072)
    python bench/cpu_dispatch.py --tokens 512 --hidden 1024 --intermediate 3072

Each format runs in a child process with ``ONEDNN_VERBOSE=1``, whose lines name the kernel
oneDNN chose (``brg_matmul:avx512_core_amx`` is AMX); a format torch computes without oneDNN
prints none, and says so. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass

_CHILD = """
import json, sys, time, torch
tokens, hidden, intermediate, dtype_name = sys.argv[1:5]
tokens, hidden, intermediate = int(tokens), int(hidden), int(intermediate)
dtype = getattr(torch, dtype_name)
torch.manual_seed(0)
layers = [torch.nn.Linear(hidden, intermediate, bias=False),
          torch.nn.Linear(intermediate, hidden, bias=False)]
layers = [layer.to(dtype).eval() for layer in layers]
x = torch.randn(tokens, hidden).to(dtype)
with torch.inference_mode():
    for _ in range(3):
        y = layers[1](layers[0](x))
    print("---timed---", flush=True)
    started = time.perf_counter()
    runs = 20
    for _ in range(runs):
        y = layers[1](layers[0](x))
    seconds = (time.perf_counter() - started) / runs
print(json.dumps({"ms": seconds * 1000, "threads": torch.get_num_threads(),
                  "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
"""


@dataclass(frozen=True)
class Dispatch:
    ms: float
    """Per up and down projection, after a warm-up."""
    threads: int
    capability: str
    """torch's own CPU capability (``AVX512``, ``AVX2``...): what its non-oneDNN kernels use."""
    kernels: dict[str, int]
    """oneDNN primitive:implementation, and how many calls ran it."""


def _run(dtype: str, tokens: int, hidden: int, intermediate: int) -> Dispatch:
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "DNNL_VERBOSE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tokens), str(hidden), str(intermediate), dtype],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    lines = completed.stdout.splitlines()
    timed = lines.index("---timed---")
    kernels: Counter[str] = Counter()
    for line in lines[timed + 1 :]:
        fields = line.split(",")
        if line.startswith(("onednn_verbose", "dnnl_verbose")) and "exec" in fields:
            # ...,exec,cpu,<primitive>,<implementation>,...
            at = fields.index("exec")
            kernels[f"{fields[at + 2]}:{fields[at + 3]}"] += 1
    figures = json.loads(lines[-1])
    return Dispatch(figures["ms"], figures["threads"], figures["capability"], dict(kernels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512, help="rows of one pass")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = ["amx_bf16", "amx_int8", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f"]
    print(f"CPU flags: {', '.join(flag for flag in wanted if flag in flags) or 'none of'}")
    print(f"shape: {args.tokens} tokens x {args.hidden} -> {args.intermediate} -> {args.hidden}")
    print()
    print("| format | ms per up+down | threads | torch CPU capability | oneDNN kernels |")
    print("|---|---:|---:|---|---|")
    results = {}
    for dtype in args.dtypes:
        result = results[dtype] = _run(dtype, args.tokens, args.hidden, args.intermediate)
        named = ", ".join(sorted(result.kernels)) or "none (not through oneDNN)"
        print(f"| {dtype} | {result.ms:.2f} | {result.threads} | {result.capability} "
              f"| {named} |")  # fmt: skip
    if "float32" in results and "bfloat16" in results:
        ratio = results["float32"].ms / results["bfloat16"].ms
        print(f"\nbf16 / fp32 speed: {ratio:.2f}x")


if __name__ == "__main__":
    main()
