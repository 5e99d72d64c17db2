"""What the padding of a packed stream costs: one short pair in a large bucket, with each padding
token attending only to itself (now) against all the padding in one causal segment (before), and
the same pair in its own bucket. Attention tiles FlexAttention computes, and milliseconds of the
compiled pass.

    python bench/padding_cost.py                      # tiny checkpoint, CPU
    python bench/padding_cost.py --device cuda --model /path/to/checkpoint --bucket 32768
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from reranker_service.engine.loading import LoadOptions, load_single_device_model
from reranker_service.engine.runner.build import RunnerOptions
from reranker_service.engine.runner.packed import PackedOptions, PackedRunner, block_mask
from reranker_service.engine.runner.packing import pack
from reranker_service.engine.runner.protocol import PassBatch, PassPair
from reranker_service.tiny_checkpoint import build_checkpoint

PAIR_TOKENS = 200


def _tiles(segments: torch.Tensor, prefix_segments: torch.Tensor) -> int:
    blocks = block_mask(segments.cpu(), prefix_segments.cpu())
    return int(blocks.kv_num_blocks.sum()) + int(blocks.full_kv_num_blocks.sum())


def _milliseconds(runner: PackedRunner, inputs: torch.Tensor, repeats: int) -> float:
    def run() -> None:
        with torch.inference_mode():
            runner._forward(inputs, 1).cpu()

    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a checkpoint; default: the tiny test checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--bucket", type=int, default=4096, help="the large bucket")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = args.model or str(build_checkpoint(Path(scratch) / "tiny"))
        options = LoadOptions(
            checkpoint, None, args.device, args.dtype, 8192, RunnerOptions(runner="packed",
                                                                             compile="false")
        )  # fmt: skip
        base = load_single_device_model(options).runner
        assert isinstance(base, PackedRunner)
        own = 256
        runner = PackedRunner(
            base._decoder, base._score_direction, base._pad_token_id, base.description,
            PackedOptions((own, args.bucket), compiled=True),
        )  # fmt: skip
        started = time.perf_counter()
        runner.compile_buckets()
        print(f"compiled buckets {own} and {args.bucket} in {time.perf_counter() - started:.1f} s")
        pair = PassBatch([PassPair(list(range(1, PAIR_TOKENS + 1)))])
        rows = []
        for name, length, one_padding_segment in (
            ("its own bucket", own, False),
            ("large bucket, padding self-only (now)", args.bucket, False),
            ("large bucket, padding one causal segment (before)", args.bucket, True),
        ):
            inputs = runner.staging.to_device(pack(pair, length, 0)).clone()
            if one_padding_segment:
                inputs[2, PAIR_TOKENS:] = inputs[2, PAIR_TOKENS]
            tiles = _tiles(inputs[2], inputs[3])
            rows.append((name, length, tiles, _milliseconds(runner, inputs, args.repeats)))
    print(f"\none {PAIR_TOKENS}-token pair, {args.device}, {args.dtype}, compiled\n")
    print("| stream | tokens | attention tiles | pass ms |\n|---|---:|---:|---:|")
    for name, length, tiles, milliseconds in rows:
        print(f"| {name} | {length} | {tiles} | {milliseconds:.2f} |")


if __name__ == "__main__":
    main()
