"""``reranker-service batch`` as users run it: a real process over a real file, in process on the
test checkpoint or against a live service, killed, interrupted and resumed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.types import ASGIApp, Receive, Scope, Send

from reranker_service.app import create_app
from tests.support.local_server import serve_in_thread
from tests.support.serving import AppFactory, asgi_client, make_settings

pytestmark = pytest.mark.slow  # starts real processes, each loading the model

QUERY = "which animal purrs"
DOCUMENTS = ["a cat purrs when it is content", "dogs bark at strangers", "the sky is blue"]


def _batch(*arguments: str | Path) -> list[str]:
    return [sys.executable, "-m", "reranker_service", "batch", *map(str, arguments)]


def _model_flags(checkpoint: Path) -> list[str]:
    """As ``make_settings`` serves it: fp32 on the CPU, no score cache."""
    return [
        "--model",
        str(checkpoint),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--cache-size",
        "0",
    ]


def _write_lines(path: Path, lines: list[Any]) -> None:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )


def _read_answers(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _events(stdout: str, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in stdout.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == name]


def _without_request_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _without_request_ids(item)
            for key, item in value.items()
            if key not in ("request_id", "id")
        }
    if isinstance(value, list):
        return [_without_request_ids(item) for item in value]
    return value


def _good(custom_id: str, query: str = QUERY) -> dict[str, Any]:
    return {"custom_id": custom_id, "query": query, "documents": DOCUMENTS}


async def test_a_file_of_good_bad_and_repeated_lines_is_answered_in_order_as_the_routes_answer(
    checkpoint: Path, app_factory: AppFactory, tmp_path: Path
) -> None:
    too_many = {"custom_id": "too-many", "query": QUERY, "documents": ["x"] * 5}
    not_a_list = {"query": QUERY, "documents": "one document"}
    tei = {"query": QUERY, "texts": DOCUMENTS}
    top_one = {"query": QUERY, "documents": DOCUMENTS, "top_n": 1}
    lines: list[Any] = [
        _good("first"),
        "{this is not json",
        too_many,
        {"custom_id": "v2", "method": "POST", "url": "/v2/rerank", "body": top_one},
        _good("first"),
        {"custom_id": "no-such-route", "url": "/embed", "body": {}},
        {"custom_id": "pairs", "url": "/v1/score", "body": {"text_1": QUERY, "text_2": DOCUMENTS}},
        not_a_list,
        "",
        tei,
    ]
    requests = tmp_path / "requests.jsonl"
    answers = tmp_path / "answers.jsonl"
    _write_lines(requests, lines)

    completed = await asyncio.to_thread(
        subprocess.run,
        [*_batch(requests, answers), *_model_flags(checkpoint), "--max-documents", "4"],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 1, completed.stderr  # some lines failed
    written = _read_answers(answers)
    assert [answer["line"] for answer in written] == [1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert [answer["custom_id"] for answer in written] == [
        "first",
        None,
        "too-many",
        "v2",
        "first",
        "no-such-route",
        "pairs",
        None,
        None,
    ]
    by_line = {answer["line"]: answer for answer in written}
    # What the routes answer the same bodies, over HTTP, from the same checkpoint.
    async with asgi_client(app_factory(max_documents=4)) as http:
        expected = {
            1: await http.post("/rerank", json=lines[0]),
            2: await http.post(
                "/rerank", content=lines[1], headers={"Content-Type": "application/json"}
            ),
            3: await http.post("/rerank", json=too_many),
            4: await http.post("/v2/rerank", json=top_one),
            7: await http.post("/score", json={"text_1": QUERY, "text_2": DOCUMENTS}),
            8: await http.post("/rerank", json=not_a_list),
            10: await http.post("/rerank", json=tei),
        }
    for number, response in expected.items():
        answer = by_line[number]
        assert answer["response"]["status_code"] == response.status_code, number
        got, want = answer["response"]["body"], response.json()
        if response.is_success:
            assert answer["error"] is None
            assert _scores(got) == pytest.approx(_scores(want), abs=1e-5), number
            assert _without_scores(got) == _without_scores(want), number
        else:
            assert _without_request_ids(got) == _without_request_ids(want), number
            assert answer["error"]["type"] == want["error"]["type"]
            assert answer["error"]["message"] == want["error"]["message"]
    assert by_line[2]["error"]["type"] == "invalid_json"
    assert by_line[3]["error"]["type"] == "payload_too_large"
    assert by_line[8]["error"]["type"] == "validation"
    assert by_line[6] == {
        "custom_id": "no-such-route",
        "line": 6,
        "response": None,
        "error": {
            "type": "validation",
            "message": "url: give one of /rerank, /score, /v1/rerank, /v2/rerank",
            "field": "url",
        },
    }
    repeated, first = by_line[5]["response"]["body"], by_line[1]["response"]["body"]
    assert _scores(repeated) == pytest.approx(_scores(first), abs=1e-5)
    [finished] = _events(completed.stdout, "batch_finished")
    assert finished["failures"] == {"invalid_json": 1, "payload_too_large": 1, "validation": 2}
    assert finished["answered"] == 9
    assert "4 failed" in completed.stderr


def _scores(body: Any) -> list[float]:
    if isinstance(body, list):
        return [rank["score"] for rank in body]
    if "data" in body:
        return [entry["score"] for entry in body["data"]]
    return [result["relevance_score"] for result in body["results"]]


def _without_scores(body: Any) -> Any:
    """The body less its scores, ids and timestamps: what must be equal exactly."""
    body = _without_request_ids(body)
    if isinstance(body, list):
        return [{k: v for k, v in rank.items() if k != "score"} for rank in body]
    if "data" in body:
        return {**body, "created": None, "data": [entry["index"] for entry in body["data"]]}
    return {**body, "results": [result["index"] for result in body["results"]]}


class _Progress:
    """The batch process's stdout, read line by line on a thread, as a test waits on it."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        self._process = process
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            with self._changed:
                self.lines.append(json.loads(raw))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_lines_done(self, at_least: int, timeout: float = 180) -> None:
        def reached() -> bool:
            return any(
                line.get("event") == "batch_progress" and line["lines_done"] >= at_least
                for line in self.lines
            )

        with self._changed:
            assert self._changed.wait_for(reached, timeout), self.lines[-5:]

    def finished(self) -> dict[str, Any]:
        self._reader.join(timeout=60)
        [line] = [line for line in self.lines if line.get("event") == "batch_finished"]
        return line


@pytest.fixture
def many_lines(tmp_path: Path) -> Path:
    requests = tmp_path / "requests.jsonl"
    _write_lines(requests, [_good(f"id-{number}", f"query {number}") for number in range(300)])
    return requests


@pytest.fixture
def started(checkpoint: Path) -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)


def _start(
    arguments: list[str], processes: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], _Progress]:
    process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(process)
    return process, _Progress(process)


def _watched(requests: Path, answers: Path, checkpoint: Path, *, concurrency: int) -> list[str]:
    """A batch run that logs its progress after every line, for the test to act on."""
    return [
        *_batch(requests, answers),
        *_model_flags(checkpoint),
        *("--concurrency", str(concurrency), "--progress-seconds", "0"),
    ]


def test_a_killed_run_resumes_where_it_stopped(
    checkpoint: Path,
    many_lines: Path,
    tmp_path: Path,
    started: list[subprocess.Popen[str]],
) -> None:
    answers = tmp_path / "answers.jsonl"
    command = _watched(many_lines, answers, checkpoint, concurrency=2)
    first, progress = _start(command, started)
    progress.wait_for_lines_done(40)
    first.kill()
    first.wait(timeout=60)
    whole_lines = len(_read_answers(answers))
    assert 40 <= whole_lines < 300
    with answers.open("ab") as output:  # what a kill in the middle of a write leaves
        output.write(b'{"custom_id": "id-299", "li')

    second, progress = _start(command, started)

    assert second.wait(timeout=300) == 0
    finished = progress.finished()
    assert finished["skipped"] == whole_lines
    assert finished["answered"] == 300 - whole_lines
    written = _read_answers(answers)
    assert [answer["custom_id"] for answer in written] == [f"id-{n}" for n in range(300)]
    assert all(answer["response"]["status_code"] == 200 for answer in written)


def test_ctrl_c_stops_sending_and_writes_every_line_in_flight(
    checkpoint: Path,
    many_lines: Path,
    tmp_path: Path,
    started: list[subprocess.Popen[str]],
) -> None:
    answers = tmp_path / "answers.jsonl"
    command = _watched(many_lines, answers, checkpoint, concurrency=4)
    process, progress = _start(command, started)
    progress.wait_for_lines_done(20)

    process.send_signal(signal.SIGINT)

    assert process.wait(timeout=120) == 130
    finished = progress.finished()
    assert finished["interrupted"] is True
    written = _read_answers(answers)  # whole lines only: each one parses
    assert len(written) == finished["answered"] < 300
    assert [answer["custom_id"] for answer in written] == [f"id-{n}" for n in range(len(written))]
    assert process.stderr is not None
    assert "interrupted: rerun the same command to resume" in process.stderr.read()


class _RefusesFirst:
    """In front of a real app: the first ``refusals`` scoring requests get a 429 with
    ``Retry-After``, as an overloaded service answers; when each request came is noted."""

    def __init__(self, app: ASGIApp, refusals: int, retry_after_seconds: int) -> None:
        self._app = app
        self._refusals = refusals
        self._retry_after = retry_after_seconds
        self.arrivals: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self._app(scope, receive, send)
            return
        with self._lock:
            refuse = self._refusals > 0
            self._refusals -= refuse
            self.arrivals.append((time.monotonic(), "refused" if refuse else "served"))
        if not refuse:
            await self._app(scope, receive, send)
            return
        body = json.dumps({"error": {"type": "overloaded", "message": "queue full"}}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(self._retry_after).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def test_url_mode_waits_out_429s_and_sends_the_key_from_the_environment(
    checkpoint: Path, tmp_path: Path
) -> None:
    requests = tmp_path / "requests.jsonl"
    answers = tmp_path / "answers.jsonl"
    _write_lines(requests, [_good(f"id-{number}") for number in range(12)])
    app = create_app(make_settings(checkpoint, api_key="batch-secret"))
    front = _RefusesFirst(app, refusals=3, retry_after_seconds=1)

    with serve_in_thread(front) as base_url:
        completed = subprocess.run(
            [*_batch(requests, answers), "--url", base_url, "--concurrency", "3"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RERANKER_API_KEY": "batch-secret"},
        )

    assert completed.returncode == 0, completed.stderr
    written = _read_answers(answers)
    assert [answer["custom_id"] for answer in written] == [f"id-{n}" for n in range(12)]
    assert all(answer["response"]["status_code"] == 200 for answer in written)  # key accepted
    refused_at = [moment for moment, outcome in front.arrivals if outcome == "refused"]
    served_at = [moment for moment, outcome in front.arrivals if outcome == "served"]
    assert len(refused_at) == 3
    assert len(served_at) == 12
    # Nothing came back before the Retry-After of the first refusal had passed.
    assert min(served_at) - min(refused_at) >= 1.0 - 0.05


def test_memory_stays_flat_over_a_hundred_thousand_lines(
    checkpoint: Path, tmp_path: Path, started: list[subprocess.Popen[str]]
) -> None:
    requests = tmp_path / "requests.jsonl"
    line_count = 100_000
    with requests.open("w") as source:
        for number in range(line_count):
            # The same pairs each time: scored once, then from the score cache, so that the
            # run measures the batch machinery, not the model.
            source.write(json.dumps(_good(f"id-{number}")) + "\n")
    answers = tmp_path / "answers.jsonl"
    command = [
        *_batch(requests, answers),
        *_model_flags(checkpoint),
        "--cache-size",
        "1000",
        "--progress-seconds",
        "1",
    ]
    process, progress = _start(command, started)
    progress.wait_for_lines_done(line_count // 10, timeout=600)
    with progress._changed:
        early = max(
            line["peak_rss_bytes"] for line in progress.lines if line["event"] == "batch_progress"
        )

    assert process.wait(timeout=900) == 0
    finished = progress.finished()
    assert finished["answered"] == line_count
    assert answers.read_bytes().count(b"\n") == line_count
    # A tenth of the way in against the end: nothing grows with the lines done.
    assert finished["peak_rss_bytes"] - early < 24 * 1024 * 1024, (early, finished)
