"""Who gets in: API keys from a file and never in the logs, /metrics on a port of its own,
CORS only when configured."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from reranker_service.cli import SettingsError, load_settings
from tests.support.exposition import Exposition
from tests.support.local_server import serve_in_thread
from tests.support.prometheus_server import free_port
from tests.support.service_process import start_service
from tests.support.serving import AppFactory, asgi_client

QUERY = "which fruit is yellow"
DOCS = ["bananas are yellow", "the sky is blue"]
KEY = "k3y-from-a-secret-file"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api_key"
    path.write_text(KEY + "\n")  # as `echo key > file` and most secret stores write it
    return path


async def test_the_key_can_come_from_a_file(app_factory: AppFactory, key_file: Path) -> None:
    app = app_factory(api_key_file=str(key_file))
    payload = {"query": QUERY, "documents": DOCS}
    async with asgi_client(app) as http:
        refused = await http.post("/rerank", json=payload)
        wrong = await http.post("/rerank", json=payload, headers={"Authorization": "Bearer k3y"})
        allowed = await http.post(
            "/rerank", json=payload, headers={"Authorization": f"Bearer {KEY}"}
        )
        info = await http.get("/info")
    assert (refused.status_code, wrong.status_code, allowed.status_code) == (401, 401, 200)
    assert info.json()["auth_required"] is True
    assert KEY not in info.text


def test_key_file_problems_stop_startup_without_showing_the_key(
    key_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = {
        "cannot be read": ["--api-key-file", str(tmp_path / "missing")],
        "is empty": ["--api-key-file", str(empty)],
        "not both": ["--api-key-file", str(key_file), "--api-key", KEY],
    }
    for expected, argv in cases.items():
        with pytest.raises(SettingsError, match=expected) as raised:
            load_settings(argv)
        assert KEY not in str(raised.value)
    monkeypatch.setenv("RERANKER_API_KEY_FILE", str(key_file))
    settings = load_settings([])
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings)


@pytest.mark.slow  # starts real server processes
def test_the_key_never_reaches_the_logs(checkpoint: Path, key_file: Path) -> None:
    service = start_service(checkpoint, env={"RERANKER_API_KEY_FILE": str(key_file)})
    try:
        with httpx.Client(base_url=service.base_url(), timeout=30) as http:
            payload = {"query": QUERY, "documents": DOCS}
            for key in (KEY, KEY + "-wrong", "not-" + KEY):
                http.post(
                    "/rerank",
                    json=payload,
                    headers={"Authorization": f"Bearer {key}", "X-Request-ID": "last"},
                )
        service.wait_for("request_failed", request_id="last")
        service.proc.send_signal(signal.SIGTERM)
        service.finish()
    finally:
        service.stop()
    assert service.raw_lines
    assert not any(KEY in line for line in service.raw_lines)
    assert service.proc.stderr is not None
    assert KEY not in service.proc.stderr.read()


def test_metrics_can_move_to_a_port_of_their_own(app_factory: AppFactory) -> None:
    metrics_port = free_port()
    app = app_factory(metrics_port=metrics_port)
    with serve_in_thread(app) as url, httpx.Client(timeout=30) as http:
        assert http.post(f"{url}/rerank", json={"query": QUERY, "documents": DOCS}).is_success
        assert http.get(f"{url}/metrics").status_code == 404
        scraped = http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200
        assert Exposition(scraped.text).value("reranker_requests_total", status="success") == 1
    with pytest.raises(httpx.ConnectError):  # closed with the app
        httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)


async def test_cors_is_off_unless_configured(app_factory: AppFactory) -> None:
    preflight = {
        "Origin": "https://search.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with asgi_client(app_factory()) as http:
        closed = await http.options("/rerank", headers=preflight)
        plain = await http.get("/info", headers={"Origin": "https://search.example"})
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in plain.headers

    app = app_factory(cors_origins="https://search.example, https://other.example")
    async with asgi_client(app) as http:
        allowed = await http.options("/rerank", headers=preflight)
        stranger = await http.options(
            "/rerank", headers={**preflight, "Origin": "https://evil.example"}
        )
        answered = await http.post(
            "/rerank",
            json={"query": QUERY, "documents": DOCS},
            headers={"Origin": "https://search.example"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://search.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in stranger.headers
    assert answered.headers["access-control-allow-origin"] == "https://search.example"
    assert "x-request-id" in answered.headers["access-control-expose-headers"].lower()
