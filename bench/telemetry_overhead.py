"""What metrics and logging cost per request: the same service with and without them.

    python bench/telemetry_overhead.py                      # builds the tiny test checkpoint
    python bench/telemetry_overhead.py --model /path/to/checkpoint --device cuda

Two apps over one loaded model, each under real uvicorn on 127.0.0.1: one as shipped (request
and batch metrics, the request's JSON line rendered in full and written to /dev/null), one built
with ``instrument_requests=False``. uvicorn's access line is written by both: whether uvicorn
logs access is process-wide, so its cost is timed alone below instead. One client sends
requests back to back, alternating between the two in rounds so that drift of the machine hits
both alike. Prints latency percentiles per variant and the difference, then the cost of each
part timed alone (steadier than the difference on a noisy machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import structlog

from reranker_service.app import create_app, load_options
from reranker_service.engine.model import load_scoring_model
from reranker_service.local_server import serve_in_thread
from reranker_service.observability.logging import configure_logging
from reranker_service.observability.metrics import ServiceMetrics
from reranker_service.settings import Settings
from reranker_service.tiny_checkpoint import build_checkpoint


@dataclass(frozen=True)
class Variant:
    name: str
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


def _summary(name: str, latencies: list[float]) -> Variant:
    cuts = statistics.quantiles(latencies, n=100)
    return Variant(
        name=name,
        requests=len(latencies),
        p50_ms=round(statistics.median(latencies) * 1000, 3),
        p90_ms=round(cuts[89] * 1000, 3),
        p99_ms=round(cuts[98] * 1000, 3),
        mean_ms=round(statistics.fmean(latencies) * 1000, 3),
    )


def _microseconds_each(action: Callable[[], object], repeats: int = 20_000) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        action()
    return round((time.perf_counter() - started) / repeats * 1e6, 1)


def _part_costs() -> dict[str, float]:
    """Each per-request piece of telemetry alone, in microseconds (logging must be configured)."""
    requests_log = structlog.get_logger("reranker_service.requests")
    access_log = logging.getLogger("uvicorn.access")
    metrics = ServiceMetrics()
    with structlog.contextvars.bound_contextvars(request_id="0f8e2a41-bench"):
        return {
            "request_completed line": _microseconds_each(
                lambda: requests_log.info(
                    "request_completed",
                    status=200,
                    doc_count=4,
                    tokens=300,
                    latency_ms=12.3,
                    tokenize_ms=0.4,
                    queue_ms=0.1,
                    inference_ms=5.0,
                    top1_score=0.9,
                    score_std=0.1,
                    top_n=None,
                )
            ),
            "uvicorn access line": _microseconds_each(
                lambda: access_log.info(
                    '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "POST", "/rerank", "1.1", 200
                )
            ),
            "dropped debug line": _microseconds_each(
                lambda: requests_log.debug("rerank_started", doc_count=4)
            ),
            "request metrics": _microseconds_each(
                lambda: metrics.record_success(
                    latency_seconds=0.012,
                    documents=4,
                    tokens=300,
                    top1_score=0.9,
                    score_stddev=0.1,
                )
            ),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint; default: build the tiny test checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--docs", type=int, default=4, help="documents per request")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--requests-per-round", type=int, default=100)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    with open(os.devnull, "w") as sink, tempfile.TemporaryDirectory() as scratch:
        configure_logging("info", "json", stream=sink)
        model_path = args.model or str(build_checkpoint(Path(scratch) / "tiny"))
        settings = Settings(model=model_path, device=args.device, host="127.0.0.1")
        model = load_scoring_model(load_options(settings))
        body = {
            "query": "what is the capital of france",
            "documents": [
                f"document {i}: paris is the capital of france" for i in range(args.docs)
            ],
        }
        latencies: dict[str, list[float]] = {"with telemetry": [], "without": []}
        with (
            serve_in_thread(create_app(settings, model=model)) as with_url,
            serve_in_thread(
                create_app(settings, model=model, instrument_requests=False)
            ) as without_url,
        ):
            urls = {"with telemetry": with_url, "without": without_url}
            clients = {name: httpx.Client(base_url=url, timeout=60) for name, url in urls.items()}
            for client in clients.values():  # warm both paths and the connections
                for _ in range(20):
                    client.post("/rerank", json=body).raise_for_status()
            for round_index in range(args.rounds):
                order = list(clients) if round_index % 2 == 0 else list(reversed(clients))
                for name in order:
                    for _ in range(args.requests_per_round):
                        started = time.perf_counter()
                        clients[name].post("/rerank", json=body).raise_for_status()
                        latencies[name].append(time.perf_counter() - started)
            for client in clients.values():
                client.close()
        parts = _part_costs()

    variants = [_summary(name, values) for name, values in latencies.items()]
    with_, without = variants
    print(
        f"model: {args.model or 'tiny test checkpoint'} on {args.device}; machine: "
        f"{platform.machine()}, {os.cpu_count()} cpus; {args.docs} docs/request; "
        f"{args.rounds} alternating rounds of {args.requests_per_round} sequential requests"
    )
    print("| variant | requests | p50 ms | p90 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in variants:
        print(f"| {v.name} | {v.requests} | {v.p50_ms} | {v.p90_ms} | {v.p99_ms} | {v.mean_ms} |")
    print(
        f"overhead at p50: {with_.p50_ms - without.p50_ms:+.3f} ms "
        f"({(with_.p50_ms / without.p50_ms - 1) * 100:+.1f} %)"
    )
    print("| part, timed alone | µs per request |")
    print("|---|---:|")
    for part, microseconds in parts.items():
        print(f"| {part} | {microseconds} |")
    if args.json:
        results = {"variants": [asdict(v) for v in variants], "parts_us": parts}
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
