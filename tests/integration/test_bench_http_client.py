"""The benchmark's lean HTTP client against real uvicorn: keep-alive reuse, bodies and headers,
and connections the server closed."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from starlette.types import Receive, Scope, Send

from tests.support.local_server import serve_in_thread
from tests.support.script_modules import load_bench_module

http_client = load_bench_module("http_client")


class _EchoApp:
    """Answers every request with what it saw, and the client port it came from."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "client_port": scope["client"][1],
            "content_type": dict(scope["headers"]).get(b"content-type", b"").decode(),
            "body": body.decode(),
        }
        answer = json.dumps(seen).encode()
        headers = [(b"content-type", b"application/json"), (b"x-echo", b"yes")]
        if scope["path"] != "/metrics":  # that one goes out chunked
            headers.append((b"content-length", str(len(answer)).encode()))
        if scope["path"] == "/close":
            headers.append((b"connection", b"close"))
        status = 404 if scope["path"] == "/missing" else 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope["path"] == "/metrics":
            half = len(answer) // 2
            await send({"type": "http.response.body", "body": answer[:half], "more_body": True})
            await send({"type": "http.response.body", "body": answer[half:]})
        else:
            await send({"type": "http.response.body", "body": answer})


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def test_requests_reuse_one_connection_and_carry_bodies() -> None:
    with serve_in_thread(_EchoApp()) as url:
        client = http_client.KeepAliveClient("127.0.0.1", _port(url))
        try:
            posted = await client.post_json("/rerank", {"query": "q", "documents": ["ü", "b"]})
            fetched = await client.get("/metrics")
            missing = await client.get("/missing")
        finally:
            await client.aclose()
    assert (posted.status, posted.headers["x-echo"]) == (200, "yes")
    seen = posted.json()
    assert (seen["method"], seen["path"]) == ("POST", "/rerank")
    assert seen["content_type"] == "application/json"
    assert json.loads(seen["body"]) == {"query": "q", "documents": ["ü", "b"]}
    assert (fetched.json()["method"], fetched.json()["body"]) == ("GET", "")
    assert fetched.headers["transfer-encoding"] == "chunked"
    assert missing.status == 404
    # Sequential requests went over one kept-alive connection.
    assert seen["client_port"] == fetched.json()["client_port"] == missing.json()["client_port"]


async def test_concurrent_callers_get_their_own_answers() -> None:
    with serve_in_thread(_EchoApp()) as url:
        client = http_client.KeepAliveClient("127.0.0.1", _port(url), max_connections=4)
        try:
            answers = await asyncio.gather(*(client.get(f"/item/{n}") for n in range(32)))
        finally:
            await client.aclose()
    assert [answer.json()["path"] for answer in answers] == [f"/item/{n}" for n in range(32)]
    assert len({answer.json()["client_port"] for answer in answers}) <= 4


async def test_closed_connections_are_not_reused() -> None:
    with serve_in_thread(_EchoApp(), timeout_keep_alive=1) as url:
        client = http_client.KeepAliveClient("127.0.0.1", _port(url))
        try:
            closing = await client.get("/close")
            after_close = await client.get("/next")
            # Wait (bounded) until uvicorn drops the idle connection for its keep-alive timeout.
            idle = client._idle[0]
            deadline = time.monotonic() + 10
            while not idle.reader.at_eof():
                if time.monotonic() > deadline:
                    pytest.fail("uvicorn did not close the idle connection")
                await asyncio.sleep(0.05)
            after_timeout = await client.get("/again")
        finally:
            await client.aclose()
    ports = [r.json()["client_port"] for r in (closing, after_close, after_timeout)]
    assert len(set(ports)) == 3
