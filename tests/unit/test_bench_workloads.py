"""The benchmark's workloads have the token lengths they promise, the same for every run."""

from __future__ import annotations

import statistics
from pathlib import Path

from transformers import AutoTokenizer

from tests.support.script_modules import load_bench_module


def test_workloads_follow_their_length_distributions(checkpoint: Path) -> None:
    workloads = load_bench_module("workloads")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)

    def lengths(name: str) -> list[int]:
        requests = workloads.make_requests(tokenizer, workloads.WORKLOADS[name], 4, seed=0)
        assert all(len(r.documents) == workloads.WORKLOADS[name].documents for r in requests)
        return [
            len(tokenizer.encode(d, add_special_tokens=False))
            for r in requests
            for d in r.documents
        ]

    # Decoding and re-encoding may merge a token or two at the cut.
    short = lengths("short")
    assert min(short) >= 28
    assert max(short) <= 100
    rag = lengths("rag")
    assert max(rag) <= 1024
    assert 200 <= statistics.median(rag) <= 300
    long = lengths("long")
    assert min(long) >= 990
    assert max(long) <= 4000

    again = workloads.make_requests(tokenizer, workloads.WORKLOADS["rag"], 4, seed=0)
    first = workloads.make_requests(tokenizer, workloads.WORKLOADS["rag"], 4, seed=0)
    assert again == first
