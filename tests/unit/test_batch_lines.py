"""The batch command's parts: reading lines, what an earlier run wrote, Retry-After, and the
in-order pipeline's bounds."""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from starlette.types import Receive, Scope, Send

from reranker_service.offline.answered import OutputFileError, answered_keys
from reranker_service.offline.batch_lines import Answer, BatchLine, error_object, parse_line
from reranker_service.offline.in_order import PairBudget, Window, answer_in_order
from reranker_service.offline.line_sender import LineSender, RetryPolicy, retry_after_seconds
from reranker_service.offline.posting import AsgiPoster


def _raw(value: object) -> bytes:
    return json.dumps(value).encode()


def test_a_body_line_goes_to_the_default_route_as_written() -> None:
    raw = _raw({"custom_id": "a", "query": "q", "documents": ["x", "y", "z"]})

    line = parse_line(7, raw, "/v2/rerank")

    assert (line.number, line.custom_id, line.route, line.body, line.pairs) == (
        7,
        "a",
        "/v2/rerank",
        raw,
        3,
    )
    assert line.refused is None
    assert line.key == ("custom_id", "a")


def test_an_envelope_sends_its_body_to_its_url() -> None:
    body = {"text_1": "q", "text_2": ["x", "y"]}
    raw = _raw({"custom_id": 12, "method": "POST", "url": "/v1/score", "body": body})

    line = parse_line(1, raw, "/rerank")

    assert (line.custom_id, line.route, json.loads(line.body), line.pairs) == (
        "12",
        "/score",
        body,
        2,
    )


@pytest.mark.parametrize(
    ("envelope", "field"),
    [
        ({"url": "/embeddings", "body": {}}, "url"),
        ({"method": "GET", "url": "/rerank", "body": {}}, "method"),
        ({"custom_id": ["a"], "url": "/rerank", "body": {}}, "custom_id"),
    ],
)
def test_an_envelope_we_cannot_route_is_refused_naming_the_field(
    envelope: dict[str, object], field: str
) -> None:
    line = parse_line(3, _raw(envelope), "/rerank")

    assert line.refused is not None
    assert line.refused.field == field


def test_a_line_that_is_not_json_goes_to_its_route_for_the_routes_own_error() -> None:
    line = parse_line(2, b"{not json", "/rerank")

    assert (line.route, line.body, line.custom_id, line.refused) == (
        "/rerank",
        b"{not json",
        None,
        None,
    )
    assert line.key == ("line", 2)


def test_error_objects_come_from_either_wire_shape() -> None:
    ours = {"error": {"type": "validation", "message": "documents: Field required"}}
    tei = {"error": "too many texts", "error_type": "Validation"}

    assert error_object(ours, 422) == ours["error"]
    assert error_object(tei, 413) == {"type": "Validation", "message": "too many texts"}
    assert error_object("<html>", 502) == {"type": "http_error", "message": "HTTP 502"}


def test_an_answer_line_carries_any_text_the_route_echoed_even_a_lone_surrogate() -> None:
    body = {"results": [{"index": 0, "document": {"text": "caf\u00e9 \ud800"}}]}
    answer = Answer(BatchLine(4, "s", "/rerank", b"{}", 1), 200, body)

    written = answer.output_line()

    assert written.count(b"\n") == 1
    assert written.endswith(b"\n")
    assert json.loads(written)["response"]["body"] == body


def _written(path: Path, *answers: Answer) -> None:
    with path.open("wb") as output:
        for answer in answers:
            output.write(answer.output_line())


def _ok(number: int, custom_id: str | None) -> Answer:
    return Answer(BatchLine(number, custom_id, "/rerank", b"{}", 1), 200, {"results": []})


def test_answered_keys_count_repeats_and_cut_a_half_written_last_line(tmp_path: Path) -> None:
    output = tmp_path / "answers.jsonl"
    _written(output, _ok(1, "a"), _ok(2, None), _ok(3, "a"))
    whole = output.read_bytes()
    with output.open("ab") as tail:
        tail.write(b'{"custom_id": "b", "li')

    answered = answered_keys(output)

    assert answered == Counter({("custom_id", "a"): 2, ("line", 2): 1})
    assert output.read_bytes() == whole


def test_an_output_file_of_something_else_is_refused(tmp_path: Path) -> None:
    output = tmp_path / "notes.txt"
    output.write_text("my notes\n")

    with pytest.raises(OutputFileError, match=r"notes\.txt:1 is not a line a batch run writes"):
        answered_keys(output)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_800_000_000.0
    in_five = email.utils.formatdate(now + 5, usegmt=True)

    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(in_five, now=now) == pytest.approx(5.0)
    assert retry_after_seconds(email.utils.formatdate(now - 5, usegmt=True), now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


class _HeldSends:
    """A send whose answers the test releases, in any order, counting what is in flight."""

    def __init__(self) -> None:
        self.released: dict[int, asyncio.Event] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.pairs_in_flight = 0
        self.most_pairs_in_flight = 0
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self._changed = asyncio.Condition()

    async def wait_started(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.started) >= count)

    def release(self, number: int) -> None:
        self.released.setdefault(number, asyncio.Event()).set()

    async def send(self, line: BatchLine) -> Answer:
        self.started.append(line.number)
        async with self._changed:
            self._changed.notify_all()
        self.in_flight += 1
        self.pairs_in_flight += line.pairs
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        self.most_pairs_in_flight = max(self.most_pairs_in_flight, self.pairs_in_flight)
        try:
            await self.released.setdefault(line.number, asyncio.Event()).wait()
        except asyncio.CancelledError:
            self.cancelled.append(line.number)
            raise
        finally:
            self.in_flight -= 1
            self.pairs_in_flight -= line.pairs
        return Answer(line, 200, None)


def _lines(count: int, pairs: int = 1) -> list[BatchLine]:
    return [BatchLine(n, None, "/rerank", b"{}", pairs) for n in range(1, count + 1)]


async def _collected(answers: AsyncIterator[Answer]) -> list[int]:
    return [answer.line.number async for answer in answers]


async def test_answers_come_back_in_input_order_with_bounded_lines_in_flight() -> None:
    sends = _HeldSends()
    answers = answer_in_order(
        _lines(10), sends.send, window=Window(3), budget=PairBudget(100), stop=asyncio.Event()
    )
    collecting = asyncio.create_task(_collected(answers))
    for wave in ((1, 2, 3), (4, 5, 6), (7, 8, 9), (10,)):
        await sends.wait_started(max(wave))
        for number in reversed(wave):  # the last of each wave finish first
            sends.release(number)

    assert await collecting == list(range(1, 11))
    assert sends.most_in_flight == 3


async def test_the_pair_budget_bounds_pairs_in_flight_and_lets_a_huge_line_through_alone() -> None:
    sends = _HeldSends()
    lines = [*_lines(4, pairs=4), BatchLine(5, None, "/rerank", b"{}", 50)]
    answers = answer_in_order(
        lines, sends.send, window=Window(10), budget=PairBudget(10), stop=asyncio.Event()
    )
    collecting = asyncio.create_task(_collected(answers))
    for wave in ((1, 2), (3, 4)):  # two lines of 4 pairs fit in 10, three do not
        await sends.wait_started(max(wave))
        assert sends.pairs_in_flight == 8
        for number in wave:
            sends.release(number)
    await sends.wait_started(5)
    assert sends.in_flight == 1  # the big line, alone
    sends.release(5)

    assert await collecting == [1, 2, 3, 4, 5]
    assert sends.most_pairs_in_flight == 50
    assert sends.most_in_flight == 2


async def test_once_stopped_no_new_line_is_sent_and_those_in_flight_still_answer() -> None:
    sends = _HeldSends()
    stop = asyncio.Event()
    answers = answer_in_order(
        _lines(10), sends.send, window=Window(2), budget=PairBudget(10), stop=stop
    )
    sends.release(1)

    first = await anext(answers)
    stop.set()
    sends.release(2)
    sends.release(3)
    rest = [answer.line.number async for answer in answers]

    assert first.line.number == 1
    assert rest == [2, 3]  # 3 was sent when 1's answer was taken, before the stop
    assert sends.started == [1, 2, 3]


async def test_closing_early_cancels_the_lines_in_flight() -> None:
    sends = _HeldSends()
    answers = answer_in_order(
        _lines(5), sends.send, window=Window(3), budget=PairBudget(10), stop=asyncio.Event()
    )
    sends.release(1)

    await anext(answers)
    await answers.aclose()

    assert sorted(sends.cancelled) == [2, 3]  # 4 was never sent: the run stopped at 1's answer


def test_the_window_halves_on_a_timeout_and_grows_back_a_line_per_window_answered() -> None:
    window = Window(8)

    window.narrow()
    window.narrow()
    assert window.size == 2
    for _ in range(2):
        window.widen()
    assert window.size == 3
    for _ in range(3 + 4 + 5 + 6 + 7 + 100):
        window.widen()
    assert window.size == 8  # never past the most asked for
    for _ in range(10):
        window.narrow()
    assert window.size == 1


class _TimesOutFirst:
    """A service whose queue let the first request wait past its deadline: a 504, then 200s."""

    def __init__(self) -> None:
        self.requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        self.requests += 1
        status = 504 if self.requests == 1 else 200
        body = {"error": {"type": "timeout", "message": "not scored within 60 s"}}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def test_a_line_timed_out_in_the_queue_is_sent_again_with_fewer_lines_in_flight() -> None:
    service = _TimesOutFirst()
    window = Window(8)
    waits: list[float] = []

    async def note_wait(seconds: float) -> None:
        waits.append(seconds)

    sender = LineSender(AsgiPoster(service), RetryPolicy(), window=window, sleep=note_wait)
    answer = await sender.send(BatchLine(1, "a", "/rerank", b"{}", 3))

    assert (answer.status_code, answer.error) == (200, None)
    assert service.requests == 2
    assert len(waits) == 1
    assert window.size == 4
    assert sender.retries == 1
