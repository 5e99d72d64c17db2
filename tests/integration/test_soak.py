"""Soak (bounded): thousands of requests from 64 concurrent clients against a real process.
Every request is answered, every score equals its pair scored alone, memory stays flat, and
the service's own counters add up to what was sent."""

from __future__ import annotations

import asyncio
import json
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reranker_service.engine.runner.protocol import ServedModel
from reranker_service.engine.scoring import probability
from reranker_service.settings import DEFAULT_INSTRUCTION
from tests.support.exposition import Exposition
from tests.support.service_process import ServiceProcess, start_service
from tests.support.serving import logits

pytestmark = pytest.mark.slow  # starts real server processes

CLIENTS = 64
REQUESTS = 2000
WARM_UP_REQUESTS = 200
MAX_DOCUMENTS = 12
RSS_GROWTH_ALLOWED = 1.25
# The client drops an idle pooled connection well before the service closes it. With both at
# 5 s (httpx's and uvicorn's defaults) a request sent on a connection that idled just that long
# races the service's close and is lost in transport: the keep-alive race every HTTP client
# pool must stay clear of, whatever the server.
CLIENT_KEEP_ALIVE_SECONDS = 5
SERVICE_KEEP_ALIVE_SECONDS = 60


@dataclass(frozen=True)
class SoakRequest:
    query: str
    documents: list[str]


def _requests(count: int, seed: int) -> list[SoakRequest]:
    rng = random.Random(seed)
    words = [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "river",
        "stone",
        "cloud",
        "paper",
        "seven",
        "green",
        "quiet",
        "market",
    ]
    queries = [" ".join(rng.choices(words, k=rng.randint(1, 8))) for _ in range(12)]
    documents = [" ".join(rng.choices(words, k=rng.randint(1, 120))) for _ in range(200)]
    return [
        SoakRequest(rng.choice(queries), rng.sample(documents, rng.randint(1, MAX_DOCUMENTS)))
        for _ in range(count)
    ]


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _send_all(base_url: str, requests: list[SoakRequest]) -> list[httpx.Response]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(len(requests)):
        queue.put_nowait(index)
    responses: list[httpx.Response | None] = [None] * len(requests)
    limits = httpx.Limits(
        max_connections=CLIENTS,
        max_keepalive_connections=CLIENTS,
        keepalive_expiry=CLIENT_KEEP_ALIVE_SECONDS,
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as http:

        async def client() -> None:
            while not queue.empty():
                index = queue.get_nowait()
                request = requests[index]
                responses[index] = await http.post(
                    "/rerank", json={"query": request.query, "documents": request.documents}
                )

        await asyncio.gather(*(client() for _ in range(CLIENTS)))
    assert all(response is not None for response in responses)
    return [response for response in responses if response is not None]


def _level(line: str) -> str | None:
    try:
        return str(json.loads(line).get("level"))
    except ValueError:
        return None


def _what_the_service_said(service: ServiceProcess) -> str:
    """Whether the service still runs, and its last words, for a request the transport lost."""
    warnings = [line for line in service.raw_lines if _level(line) != "info"]
    return "\n".join(
        [
            f"a request lost its connection; the service's exit code: {service.proc.poll()}",
            *warnings[-20:],
            *service.stderr_lines[-20:],
        ]
    )


def test_soak(checkpoint: Path, scoring_model: ServedModel) -> None:
    warm_up, soak = _requests(WARM_UP_REQUESTS, seed=1), _requests(REQUESTS, seed=2)
    service = start_service(
        checkpoint,
        *("--log-level", "info", "--keep-alive-seconds", str(SERVICE_KEEP_ALIVE_SECONDS)),
    )
    try:
        base_url = service.base_url()
        asyncio.run(_send_all(base_url, warm_up))
        rss_start = _rss_bytes(service.proc.pid)
        try:
            responses = asyncio.run(_send_all(base_url, soak))
        except httpx.TransportError as exc:
            raise AssertionError(_what_the_service_said(service)) from exc
        rss_end = _rss_bytes(service.proc.pid)
        exposition = Exposition(httpx.get(f"{base_url}/metrics", timeout=30).text)
        service.proc.send_signal(signal.SIGTERM)
        assert service.proc.wait(timeout=60) == 0
    finally:
        service.stop()
    print(f"\nsoak: {REQUESTS} requests, RSS {rss_start / 2**20:.1f} -> {rss_end / 2**20:.1f} MiB")

    # Every request answered, in full.
    assert [response.status_code for response in responses] == [200] * REQUESTS
    # Every score equals its pair scored alone (batched with whatever else was queued).
    alone: dict[tuple[str, str], float] = {}
    encoder = scoring_model.encoder
    for request, response in zip(soak, responses, strict=True):
        results = response.json()["results"]
        assert sorted(r["index"] for r in results) == list(range(len(request.documents)))
        for result in results:
            pair = (request.query, request.documents[result["index"]])
            if pair not in alone:
                ids = encoder.encode(DEFAULT_INSTRUCTION, pair[0], [pair[1]])
                alone[pair] = probability(logits(scoring_model, ids)[0])
            assert result["relevance_score"] == pytest.approx(alone[pair], abs=1e-4)
    # Memory is flat once warm.
    assert rss_end <= rss_start * RSS_GROWTH_ALLOWED
    # The service counted exactly what was sent.
    sent = WARM_UP_REQUESTS + REQUESTS
    documents = sum(len(r.documents) for r in warm_up + soak)
    assert exposition.value("reranker_requests_total", status="success") == sent
    assert exposition.value("reranker_requests_total", status="fail") == 0
    assert exposition.histogram("reranker_request_documents").count == sent
    assert exposition.histogram("reranker_request_documents").sum == documents
    # Each pair was either computed in a forward pass or answered from the score cache (the
    # soak's requests repeat pairs; the cache is on, as served by default).
    cached = exposition.value("reranker_cache_lookups_total", result="hit")
    assert cached > 0
    assert exposition.histogram("reranker_batch_size").sum + cached == documents
    assert exposition.value("reranker_cache_lookups_total", result="miss") + cached == documents
