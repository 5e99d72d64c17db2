"""Seconds from a service process's start to ``/ready``, and to its compiled runner serving, for
each ``RERANKER_COMPILE`` mode, on one compile cache: ``false``, ``background`` (cold cache),
``true`` (warm: what ``background`` compiled), then ``background`` again (warm).

    python bench/startup_bench.py                      # tiny test checkpoint, CPU
    python bench/startup_bench.py --model /path/to/checkpoint --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from contenders import ServiceOverHttp
from reranker_service.tiny_checkpoint import build_checkpoint

MODES = (("false", "cold"), ("background", "cold"), ("true", "warm"), ("background", "warm"))


async def _starts(args: argparse.Namespace, checkpoint: str, cache: Path) -> list[str]:
    rows = []
    for mode, cache_state in MODES:
        service = ServiceOverHttp(
            checkpoint,
            args.device,
            args.dtype,
            args.max_length,
            compile=mode,
            compile_cache=str(cache),
        )
        await service.start()
        await service.stop()
        compiled = service.compiled_seconds
        rows.append(
            f"| {mode} | {cache_state if mode != 'false' else '–'} "
            f"| {service.startup_seconds:.1f} "
            f"| {f'{compiled:.1f}' if compiled is not None else '–'} "
            f"| {', '.join(service.compile_states)} |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint; default: the tiny test checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-length", type=int, default=8192)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.model or str(build_checkpoint(Path(scratch) / "tiny"))
        rows = asyncio.run(_starts(args, checkpoint, Path(scratch) / "compile-cache"))
    print("\n| RERANKER_COMPILE | compile cache | s to /ready | s to compiled runner | state |")
    print("|---|---|---:|---:|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
