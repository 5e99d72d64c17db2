"""A real Prometheus server scrapes the running service; PromQL gives back the known traffic.

Every counter series exists (at zero) from the first scrape and the queries are evaluated at the
last scrape's timestamp, so ``increase`` and ``rate`` need no extrapolation and the expected
values are exact: request rate, error ratio and p95 latency.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reranker_service.engine.runner.protocol import PassBatch, PendingScores, ServedModel
from tests.support.local_server import serve_in_thread
from tests.support.paths import ROOT
from tests.support.prometheus_server import PrometheusServer, run_prometheus
from tests.support.serving import AppFactory, RunnerWrapper

pytestmark = pytest.mark.slow  # starts real server processes

WINDOW = "10m"
WINDOW_SECONDS = 600
OBSERVABILITY_DOC = ROOT / "docs" / "observability.md"

FAST, SLOW, FAILING, UNAUTHORIZED = 36, 4, 2, 3
SLOW_PASS_SECONDS = 0.55
"""Puts every slow request in the (0.5, 0.75] latency bucket, far from the fast ones."""


class ScriptedModel(RunnerWrapper):
    """The real model, with a switchable slow forward pass and an injected scoring failure."""

    def __init__(self, model: ServedModel) -> None:
        super().__init__(model)
        self.pass_seconds = 0.0
        self.failing = False

    def launch(self, batch: PassBatch) -> PendingScores:
        if self.failing:
            raise RuntimeError("injected scoring failure")
        if self.pass_seconds:
            time.sleep(self.pass_seconds)  # stands in for a long forward pass
        return super().launch(batch)


@pytest.fixture
def prometheus(tmp_path: Path, service_url: str) -> Iterator[PrometheusServer]:
    with run_prometheus(tmp_path, service_url.removeprefix("http://")) as server:
        yield server


@pytest.fixture
def scripted(scoring_model: ServedModel) -> ScriptedModel:
    return ScriptedModel(scoring_model)


@pytest.fixture
def service_url(app_factory: AppFactory, scripted: ScriptedModel) -> Iterator[str]:
    app = app_factory(model=scripted, api_key="k")
    with serve_in_thread(app) as base_url:
        yield base_url


def test_promql_over_scraped_data_gives_rate_error_ratio_and_p95(
    service_url: str, prometheus: PrometheusServer, scripted: ScriptedModel
) -> None:
    # A first scrape with every series at zero, before any traffic: success and fail for the
    # served model, and for the requests refused before a model is chosen (model="").
    prometheus.wait_for('sum(up{job="reranker"})', 1)
    prometheus.wait_for("count(reranker_requests_total)", 4)
    payload = {"query": "q", "documents": ["a short document"]}
    auth = {"Authorization": "Bearer k"}
    with httpx.Client(base_url=service_url, timeout=30) as http:
        for _ in range(FAST):
            assert http.post("/rerank", json=payload, headers=auth).status_code == 200
        scripted.pass_seconds = SLOW_PASS_SECONDS
        for _ in range(SLOW):
            assert http.post("/v2/rerank", json=payload, headers=auth).status_code == 200
        scripted.pass_seconds, scripted.failing = 0.0, True
        for _ in range(FAILING):
            assert http.post("/rerank", json=payload, headers=auth).status_code == 500
        for _ in range(UNAUTHORIZED):
            assert http.post("/rerank", json=payload).status_code == 401

    answered = FAST + SLOW + FAILING
    at = prometheus.wait_for(
        "sum(reranker_requests_total) + sum(reranker_request_errors_total)",
        answered + FAILING + UNAUTHORIZED,
    )

    def value(promql: str) -> float:
        return prometheus.scalar(promql, at)

    total = f"sum(increase(reranker_requests_total[{WINDOW}]))"
    assert value(total) == pytest.approx(answered, rel=1e-9)
    request_rate = f"sum(rate(reranker_requests_total[{WINDOW}]))"
    assert value(request_rate) == pytest.approx(answered / WINDOW_SECONDS, rel=1e-9)
    error_ratio = f'sum(rate(reranker_requests_total{{status="fail"}}[{WINDOW}])) / {request_rate}'
    assert value(error_ratio) == pytest.approx(FAILING / answered, rel=1e-9)
    # 36 fast and 4 slow successes: the 95th percentile (rank 38) lies halfway through the
    # slow ones' (0.5, 0.75] bucket.
    p95 = (
        "histogram_quantile(0.95, sum by (le) "
        f"(rate(reranker_request_latency_seconds_bucket[{WINDOW}])))"
    )
    assert value(p95) == pytest.approx(0.5 + 0.25 * (0.95 * 40 - FAST) / SLOW, rel=1e-9)
    errors = {
        sample["metric"]["type"]: float(sample["value"][1])
        for sample in prometheus.query(
            f"sum by (type) (increase(reranker_request_errors_total[{WINDOW}])) > 0", at
        )
    }
    assert errors == {
        "internal": pytest.approx(FAILING),
        "unauthorized": pytest.approx(UNAUTHORIZED),
    }

    # The documented queries are the ones users paste: each must evaluate without error.
    for promql in _readme_promql():
        prometheus.query(promql, at)


def _readme_promql() -> list[str]:
    blocks = re.findall(r"```promql\n(.*?)```", OBSERVABILITY_DOC.read_text(), flags=re.DOTALL)
    queries = [line for block in blocks for line in block.splitlines() if line.strip()]
    queries = [q for q in queries if not q.lstrip().startswith("#")]
    assert queries, "docs/observability.md has no promql blocks"
    return queries
