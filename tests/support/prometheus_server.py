"""A real Prometheus server (Debian's ``prometheus``) on 127.0.0.1, scraping a test service."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

SCRAPE_SECONDS = 1


def free_port() -> int:
    """A port free on 127.0.0.1 now (for servers that must be told their port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A 127.0.0.1 port that another socket listens on while the block runs."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


class PrometheusServer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        body = self.http.get(path, params=params).json()
        assert body["status"] == "success", (params, body)
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        result: list[dict[str, Any]] = self._get("/api/v1/query", params)["result"]
        return result

    def query_range(
        self, promql: str, start: float, end: float, step_s: float
    ) -> list[dict[str, Any]]:
        params = {"query": promql, "start": start, "end": end, "step": step_s}
        result: list[dict[str, Any]] = self._get("/api/v1/query_range", params)["result"]
        return result

    def scalar(self, promql: str, at: float) -> float:
        [sample] = self.query(promql, at)
        return float(sample["value"][1])

    def wait_until(self, promql: str, timeout_s: float = 60) -> None:
        """Wait until ``promql`` returns any series (a filter such as ``x > 0`` included)."""
        deadline = time.monotonic() + timeout_s
        while not self.query(promql):
            assert time.monotonic() < deadline, f"Prometheus never had data for {promql}"
            time.sleep(0.2)

    def reload(self, config_path: Path) -> None:
        """Apply the configuration file Prometheus was started with again, rewritten at
        ``config_path`` since; its rule groups, if it names any, are loaded on return."""
        answer = self.http.post("/-/reload")
        assert answer.status_code == 200, (config_path, answer.text)
        if yaml.safe_load(config_path.read_text()).get("rule_files"):
            # The reload answers once the configuration is applied, rule groups included.
            assert self._get("/api/v1/rules", {})["groups"], f"no rules loaded: {config_path}"

    def exemplars(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """The exemplars of the series ``promql`` selects: one entry per series, each with its
        ``exemplars`` (labels, value, timestamp)."""
        params = {"query": promql, "start": start, "end": end}
        found: list[dict[str, Any]] = self._get("/api/v1/query_exemplars", params)
        return found

    def wait_for(self, promql: str, expected: float, timeout_s: float = 60) -> float:
        """Wait until a scrape brings ``promql`` to ``expected``; return that scrape's time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = self.query(promql)
            if result and float(result[0]["value"][1]) == expected:
                return self.scalar("max(timestamp(reranker_requests_total))", time.time())
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never saw {promql} == {expected}")


@contextlib.contextmanager
def serving(command: list[str], http: httpx.Client, name: str) -> Iterator[None]:
    """Run a Prometheus-family server (Prometheus, Alertmanager) until the block ends; the
    block starts once its ``/-/ready`` answers 200, and fails at once, with the server's
    stderr, if it exits first."""
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                if http.get("/-/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{name} did not become ready"
            time.sleep(0.1)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        http.close()


@contextlib.contextmanager
def run_prometheus(
    workdir: Path,
    target: str | Sequence[str],
    rule_files: Sequence[Path] = (),
    features: Sequence[str] = (),
) -> Iterator[PrometheusServer]:
    """Scrape ``target`` (host:port, or several) every second as job ``reranker``, with these
    rules and feature flags (``--enable-feature``)."""
    targets = [target] if isinstance(target, str) else list(target)
    config = {
        "global": {
            "scrape_interval": f"{SCRAPE_SECONDS}s",
            "evaluation_interval": f"{SCRAPE_SECONDS}s",
        },
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": [{"job_name": "reranker", "static_configs": [{"targets": targets}]}],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    with start_prometheus(workdir, config_path, features=features) as server:
        yield server


@contextlib.contextmanager
def start_prometheus(
    workdir: Path, config_path: Path, port: int | None = None, features: Sequence[str] = ()
) -> Iterator[PrometheusServer]:
    """Prometheus with this configuration file, its data in ``workdir``, listening on
    127.0.0.1 (``port``, or a free one) until the block ends."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: install Debian's 'prometheus' package (see README)")
    port = port if port is not None else free_port()
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        "--web.enable-lifecycle",  # POST /-/reload: a drill loads its rules after the scrapes
        *(f"--enable-feature={feature}" for feature in features),
    ]
    server = PrometheusServer(f"http://127.0.0.1:{port}")
    with serving(command, server.http, "Prometheus"):
        yield server
