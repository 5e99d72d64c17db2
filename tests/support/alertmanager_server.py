"""A real Alertmanager (Debian's ``prometheus-alertmanager``) on 127.0.0.1, and the webhook
receiver it notifies: an HTTP server in the test that keeps every notification it gets."""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.prometheus_server import free_port, serving

Notification = dict[str, Any]
"""One webhook call: ``status``, ``groupLabels``, ``commonLabels``, ``alerts`` (each with its
``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``), as Alertmanager posts it."""


class WebhookReceiver:
    """Alertmanager's webhook receiver: every notification posted to ``url``, kept in arrival
    order."""

    def __init__(self) -> None:
        self.notifications: list[Notification] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._arrived:
                    receiver.notifications.append(json.loads(body))
                    receiver._arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads the notifications, not an access log

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def wait_for(
        self, what: str, matches: Callable[[Notification], bool], timeout_s: float
    ) -> Notification:
        """The first notification, past or to come within ``timeout_s``, that ``matches``."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while True:
                found = next((n for n in self.notifications if matches(n)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                assert left > 0, f"no notification {what} within {timeout_s:.0f} s"
                self._arrived.wait(left)


class AlertmanagerServer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)

    def alerts(self) -> list[dict[str, Any]]:
        """``GET /api/v2/alerts``: the alerts it holds, each with its ``status`` (``state``:
        active, suppressed or unprocessed; ``inhibitedBy``: the fingerprints muting it)."""
        response = self.http.get("/api/v2/alerts")
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """``POST /api/v2/alerts``, as Prometheus sends them."""
        self.http.post("/api/v2/alerts", json=alerts).raise_for_status()


@contextlib.contextmanager
def start_alertmanager(workdir: Path, config: dict[str, Any]) -> Iterator[AlertmanagerServer]:
    """Alertmanager with this configuration on a free 127.0.0.1 port, alone (no cluster), its
    state in ``workdir``, until the block ends."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.fail("alertmanager not found: install Debian's 'prometheus-alertmanager'")
    config_path = workdir / "alertmanager.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    command = [
        binary,
        f"--config.file={config_path}",
        f"--storage.path={workdir / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # alone: no gossip port on every interface
        "--log.level=warn",
    ]
    server = AlertmanagerServer(f"http://127.0.0.1:{port}")
    with serving(command, server.http, "Alertmanager"):
        yield server
