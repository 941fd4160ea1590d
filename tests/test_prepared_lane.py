"""The prepared lane answers a prepared read exactly as the full middleware stack does: the same
ASGI messages (status, headers in order, body), the same log line and the same metrics; and
everything it does not answer reaches the stack untouched, run once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import Message

from ragstream.observability.logs import RequestIdFilter, request_logger
from ragstream.prepared_lane import PreparedLane
from tests.conftest import make_settings
from tests.database_faults import database_unreachable
from tests.evaluations_support import create_evaluation
from tests.metrics_support import parse
from tests.support import Account, LiveServer, running_server

ME = "query Me { me { id displayName role } }"
LIST = (
    "query Page($first: Int) { evaluations(first: $first) { edges { cursor node { id title "
    "status createdAt owner { displayName } } } pageInfo { hasNextPage endCursor } } }"
)
OPERATIONS = "ragstream_graphql_operation_duration_seconds_count"


@dataclass
class Lane:
    server: LiveServer
    account: Account

    @property
    def lane(self) -> PreparedLane:
        lane = self.server.app.lane  # type: ignore[attr-defined]
        assert isinstance(lane, PreparedLane)
        return lane


@pytest.fixture
async def lane(database_url: str, tmp_path: Path) -> AsyncIterator[Lane]:
    settings = make_settings(database_url, tmp_path, metrics=True)
    async with running_server(settings) as server:
        account = await server.register(name="Lena Lane")
        for index in range(3):
            await create_evaluation(server, account, title=f"Lane #{index}")
        yield Lane(server, account)


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def captured(name: str) -> Iterator[list[logging.LogRecord]]:
    handler = Captured()
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger(name)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # other tests' handlers on the root see none of these lines
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


async def call(
    server: LiveServer,
    body: bytes,
    *,
    full_stack: bool = False,
    token: str | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    chunks: int = 1,
) -> list[Message]:
    """One POST /graphql straight into the app (``full_stack``: past the lane) and every ASGI
    message it sent back."""
    sent = [
        (b"host", b"testserver"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *(headers or []),
    ]
    if token is not None:
        sent.append((b"authorization", f"Bearer {token}".encode()))
    size = -(-len(body) // chunks)
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages: list[Message] = [
        {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
        for i, part in enumerate(parts)
    ]

    async def receive() -> Message:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    out: list[Message] = []

    async def send(message: Message) -> None:
        out.append(message)

    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/graphql",
        "raw_path": b"/graphql",
        "root_path": "",
        "query_string": b"",
        "headers": sent,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    app = server.app
    if full_stack:
        await Starlette.__call__(app, scope, receive, send)
    else:
        await app(scope, receive, send)
    return out


def request_body(query: str, variables: dict[str, Any] | None = None) -> bytes:
    body: dict[str, Any] = {"query": query}
    if variables is not None:
        body["variables"] = variables
    return orjson.dumps(body)


def line_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = {
        name: value
        for name, value in record.__dict__.items()
        if name not in ("created", "msecs", "relativeCreated", "asctime", "duration_ms")
    }
    fields["message"] = record.getMessage()
    return fields


def operations_counted(server: LiveServer, name: str) -> float:
    body, _ = server.state.metrics.exposition()
    scrape = parse(body.decode())
    return scrape.value(OPERATIONS, operation=name, type="query", outcome="ok")


async def test_a_prepared_read_answers_in_the_same_messages_lines_and_metrics(
    lane: Lane,
) -> None:
    server, token = lane.server, lane.account.access_token
    cases = [
        (request_body(ME), "Me", []),
        (request_body(LIST, {"first": 2}), "Page", []),
        (
            request_body(LIST, {"first": 2}),
            "Page",
            [(b"accept", b"application/graphql-response+json")],
        ),
        (request_body(LIST), "Page", [(b"x-request-id", b"client-chosen-id-1")]),
    ]
    for body, name, extra in cases:
        headers = [(b"x-request-id", b"lane-equivalence"), *extra]
        await call(server, body, token=token, headers=headers)  # learned by the pipeline
        answered = lane.lane.answered
        outcomes = []
        for full_stack in (False, True):
            counted = operations_counted(server, name)
            with captured(request_logger.name) as lines:
                messages = await call(
                    server, body, token=token, headers=headers, full_stack=full_stack
                )
            assert operations_counted(server, name) == counted + 1
            [line] = lines
            outcomes.append((messages, line_fields(line)))
        assert lane.lane.answered == answered + 1
        (lane_messages, lane_line), (stack_messages, stack_line) = outcomes
        assert lane_messages == stack_messages
        assert lane_line == stack_line
        start, sent = lane_messages
        assert start["status"] == 200
        assert b'"errors"' not in sent["body"]
        request_id = dict(start["headers"])[b"x-request-id"]
        assert request_id == dict(headers)[b"x-request-id"]
        assert lane_line["request_id"] == request_id.decode()
        assert (lane_line["operation"], lane_line["outcome"]) == (name, "ok")


async def test_a_new_request_id_and_a_body_in_parts_answer_alike(lane: Lane) -> None:
    server, token = lane.server, lane.account.access_token
    body = request_body(LIST, {"first": 3})
    await call(server, body, token=token)
    answered = lane.lane.answered
    given = await call(server, body, token=token, chunks=4)
    stacked = await call(server, body, token=token, chunks=4, full_stack=True)
    assert lane.lane.answered == answered + 1
    ids = [dict(m[0]["headers"])[b"x-request-id"] for m in (given, stacked)]
    assert ids[0] != ids[1]
    assert all(len(i) == 32 for i in ids)
    for messages in (given, stacked):
        messages[0]["headers"] = [h for h in messages[0]["headers"] if h[0] != b"x-request-id"]
    assert given == stacked


async def test_what_the_lane_does_not_answer_reaches_the_stack_once(lane: Lane) -> None:
    server, account = lane.server, lane.account
    body = request_body(LIST, {"first": 2})
    await call(server, body, token=account.access_token)
    answered = lane.lane.answered
    prepared = server.state.prepared
    assert prepared is not None
    cases: list[tuple[str | None, list[tuple[bytes, bytes]], str | None]] = [
        # Given way: the token is refused, the pipeline reports it.
        ("garbage", [], "UNAUTHENTICATED"),
        (None, [], "UNAUTHENTICATED"),
        # Not taken: CORS, streaming transports.
        (account.access_token, [(b"origin", b"http://elsewhere.example")], None),
        (account.access_token, [(b"accept", b"text/event-stream")], None),
    ]
    for token, headers, code in cases:
        headers = [(b"x-request-id", b"lane-fall-through"), *headers]
        with captured(request_logger.name) as lines:
            given = await call(server, body, token=token, headers=headers)
        stacked = await call(server, body, token=token, headers=headers, full_stack=True)
        assert given == stacked, headers
        [line] = lines  # one line: the stack's
        assert line.request_id == "lane-fall-through"  # type: ignore[attr-defined]
        start, sent = given
        assert [v for n, v in start["headers"] if n == b"x-request-id"] == [b"lane-fall-through"]
        if code is not None:
            assert [e["extensions"]["code"] for e in orjson.loads(sent["body"])["errors"]] == [code]
    assert lane.lane.answered == answered


async def test_a_mutation_through_the_lane_runs_once(lane: Lane) -> None:
    server, account = lane.server, lane.account
    create = 'mutation { createEvaluation(input: {title: "Once", companyName: "C"}) { id } }'
    count = "{ evaluations { totalCount } }"
    before = (await server.execute(count, token=account.access_token)).ok()
    for _ in range(2):
        [start, sent] = await call(server, request_body(create), token=account.access_token)
        assert start["status"] == 200
        assert b'"errors"' not in sent["body"]
    after = (await server.execute(count, token=account.access_token)).ok()
    assert after["evaluations"]["totalCount"] == before["evaluations"]["totalCount"] + 2


async def test_a_body_over_the_limit_is_refused_by_the_stack(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, max_body_bytes=1024)
    async with running_server(settings) as server:
        account = await server.register()
        body = request_body(ME)
        await call(server, body, token=account.access_token)
        padded = request_body(ME + " " * 2000)
        [start, sent] = await call(server, padded, token=account.access_token)
        assert start["status"] == 413
        assert orjson.loads(sent["body"])["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"


async def test_a_database_failure_in_the_lane_is_reported_masked_by_the_stack(
    lane: Lane, database_url: str
) -> None:
    server, token = lane.server, lane.account.access_token
    body = request_body(ME)
    await call(server, body, token=token)
    answered = lane.lane.answered
    headers = [(b"x-request-id", b"lane-database-down")]
    with captured("ragstream") as records:
        async with database_unreachable(database_url):
            [start, sent] = await call(server, body, token=token, headers=headers)
    assert lane.lane.answered == answered
    assert start["status"] == 200
    [error] = orjson.loads(sent["body"])["errors"]
    assert error["message"] == "Internal server error"
    assert error["extensions"] == {
        "code": "INTERNAL_SERVER_ERROR",
        "requestId": "lane-database-down",
    }
    lines = [r for r in records if r.name == request_logger.name]
    assert len(lines) == 1
    # Every record made for the request carries its id (background work logs its own).
    ids = {getattr(r, "request_id", None) for r in records} - {None}
    assert ids == {"lane-database-down"}
    assert any(r.exc_info for r in records if r.request_id == "lane-database-down")  # type: ignore[attr-defined]
    # The service answers again once the database is back.
    [start, sent] = await call(server, body, token=token)
    assert b'"errors"' not in sent["body"]
