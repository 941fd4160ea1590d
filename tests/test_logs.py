"""Structured logs: one JSON line per request or websocket operation, the request id on every
line (errors included), and nothing secret in any of them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragstream.observability import logs
from ragstream.observability.logs import (
    REQUEST_ID,
    JsonFormatter,
    LineHandler,
    RequestIdFilter,
    RequestLines,
    request_line,
    request_logger,
)
from ragstream.settings import Settings
from tests.chat_support import eventually
from tests.conftest import TEST_JWT_SECRET
from tests.database_faults import database_unreachable
from tests.ports import free_port
from tests.support import PASSWORD, LiveServer
from tests.test_embedded import command
from tests.test_websockets import raw_socket, receive, send, sign_in, subscribe


class JsonLines:
    def __init__(self) -> None:
        self.stream = io.StringIO()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def text(self) -> str:
        """The server's lines (the test's own HTTP client logs its requests too)."""
        return "\n".join(json.dumps(x) for x in self.all() if not x["logger"].startswith("httpx"))


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    """What the server logs while the test runs, through the JSON formatter."""
    lines = JsonLines()
    handler = logging.StreamHandler(lines.stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def request_lines(lines: JsonLines, request_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in lines.all()
        if line["logger"] == "ragstream.requests" and line["request_id"] == request_id
    ]


async def test_a_request_has_one_line_with_its_operation_and_no_secrets(
    server: LiveServer, json_lines: JsonLines
) -> None:
    account = await server.register()
    async with server.http_client() as client:
        me = await client.post(
            "/graphql",
            json={"query": "query Me { me { id } }"},
            headers={"authorization": f"Bearer {account.access_token}", "x-request-id": "req-0001"},
        )
        login = await client.post(
            "/graphql",
            json={
                "query": "mutation SignIn($e: String!, $p: String!) "
                "{ login(email: $e, password: $p) { accessToken refreshToken } }",
                "variables": {"e": account.email, "p": PASSWORD},
            },
            headers={"x-request-id": "req-0002"},
        )
        # The same document again: answered without the pipeline, logged alike.
        again = await client.post(
            "/graphql",
            json={"query": "query Me { me { id } }"},
            headers={"authorization": f"Bearer {account.access_token}", "x-request-id": "req-0004"},
        )
        got = await client.get(
            "/graphql",
            params={"query": "query Hello($p: String!) { __typename }", "variables": '{"p":"x"}'},
            headers={"accept": "application/json", "x-request-id": "req-0003"},
        )
    assert me.status_code == login.status_code == got.status_code == 200

    [line] = request_lines(json_lines, "req-0001")
    assert line["level"] == "info"
    assert (line["method"], line["path"], line["status"], line["transport"]) == (
        "POST",
        "/graphql",
        200,
        "http",
    )
    assert (line["operation"], line["operation_type"], line["outcome"]) == ("Me", "query", "ok")
    assert line["user_id"] == account.id
    assert isinstance(line["duration_ms"], float)
    assert "error_codes" not in line
    assert again.json() == me.json()
    [repeated] = request_lines(json_lines, "req-0004")
    assert {
        k: v for k, v in repeated.items() if k not in ("duration_ms", "time", "request_id")
    } == {k: v for k, v in line.items() if k not in ("duration_ms", "time", "request_id")}
    [signed_in] = request_lines(json_lines, "req-0002")
    assert (signed_in["operation"], signed_in["outcome"], signed_in.get("user_id")) == (
        "SignIn",
        "ok",
        None,
    )
    [fetched] = request_lines(json_lines, "req-0003")
    assert (fetched["method"], fetched["path"], fetched["operation"]) == (
        "GET",
        "/graphql",
        "Hello",
    )

    tokens = login.json()["data"]["login"]
    logged = json_lines.text()
    for secret in (PASSWORD, account.access_token, tokens["accessToken"], tokens["refreshToken"]):
        assert secret not in logged
    assert "variables" not in logged


BACKGROUND_LOGGERS = ("procrastinate.", "ragstream.domain.documents.jobs")


async def test_error_lines_carry_the_request_id_the_client_saw(
    server: LiveServer, database_url: str, json_lines: JsonLines
) -> None:
    account = await server.register()
    async with database_unreachable(database_url), server.http_client() as client:
        response = await client.post(
            "/graphql",
            json={"query": "query Me { me { id } }"},
            headers={"authorization": f"Bearer {account.access_token}"},
        )
    [error] = response.json()["errors"]
    request_id = error["extensions"]["requestId"]
    assert request_id == response.headers["x-request-id"]

    # (The outage also stops the ingestion worker, in the background: its lines belong to no
    # request.)
    errors = [
        line
        for line in json_lines.all()
        if line["level"] == "error" and not line["logger"].startswith(BACKGROUND_LOGGERS)
    ]
    assert errors
    assert all(line["request_id"] == request_id for line in errors)
    assert any("exception" in line for line in errors)  # the cause is in the log, not the answer
    [line] = request_lines(json_lines, request_id)
    assert (line["outcome"], line["error_codes"]) == ("error", ["INTERNAL_SERVER_ERROR"])


async def test_each_websocket_operation_has_its_line(
    server: LiveServer, json_lines: JsonLines
) -> None:
    account = await server.register()
    await server.listen()
    async with raw_socket(server, headers={"X-Request-ID": "ws-logs-0001"}) as ws:
        await sign_in(ws, account)
        await send(ws, subscribe("1", "query Me { me { id } }"))
        assert (await receive(ws))["type"] == "next"
        assert (await receive(ws))["type"] == "complete"
        await send(ws, subscribe("2", "query Nope { nope }"))
        assert (await receive(ws))["type"] == "error"

    # sign_in's own check of the socket comes first.
    lines = request_lines(json_lines, "ws-logs-0001")[-2:]
    assert [(x["operation"], x["outcome"], x["transport"]) for x in lines] == [
        ("Me", "ok", "websocket"),
        ("Nope", "rejected", "websocket"),
    ]
    assert lines[0]["user_id"] == account.id
    assert lines[1]["error_codes"] == ["BAD_USER_INPUT"]


def _record(created: float, message: str, **fields: Any) -> logging.LogRecord:
    record = logging.LogRecord("ragstream.requests", logging.INFO, __file__, 1, message, (), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    record.__dict__.update(fields)
    return record


def test_a_json_line_has_the_iso_time_and_only_the_listed_fields() -> None:
    formatter = JsonFormatter()
    # Two records in one second, then one in the next: the second's text is reused, not kept.
    # (Binary fractions: the float is the instant, so no rounding question arises.)
    instants = [1_738_324_800.125, 1_738_324_800.5, 1_738_324_801.0625]
    lines = [
        json.loads(
            formatter.format(
                _record(at, "POST /graphql 200 ⟨é⟩", request_id="r-1", status=200, token="secret")
            )
        )
        for at in instants
    ]
    assert [line["time"] for line in lines] == [
        datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds") for at in instants
    ]
    assert lines[0] == {
        "time": "2025-01-31T12:00:00.125+00:00",
        "level": "info",
        "logger": "ragstream.requests",
        "message": "POST /graphql 200 ⟨é⟩",
        "request_id": "r-1",
        "status": 200,
    }


def test_json_is_the_production_default() -> None:
    assert Settings(environment="production").log_format == "json"
    assert Settings(environment="development").log_format == "text"


async def test_serve_writes_only_json_lines(database_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGSTREAM_", "OPENAI_"))}
    env.update(
        RAGSTREAM_DATABASE_URL=database_url,
        RAGSTREAM_DATA_DIR=str(tmp_path / "data"),
        RAGSTREAM_JWT_SECRET=TEST_JWT_SECRET,
        RAGSTREAM_LOG_FORMAT="json",
        RAGSTREAM_INGESTION_WORKER="false",
    )
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *command(),
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(120), httpx.AsyncClient() as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
            await client.post(
                f"http://127.0.0.1:{port}/graphql",
                json={"query": "query Ping { __typename }"},
                headers={"x-request-id": "serve-json-0001"},
            )
    finally:
        process.terminate()
        assert process.stderr is not None
        output = (await process.stderr.read()).decode()
        await process.wait()

    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    assert any(line["message"] == "ragstream stopped" for line in lines)
    [ping] = [line for line in lines if line.get("request_id") == "serve-json-0001"]
    assert (ping["operation"], ping["status"]) == ("Ping", 200)


class CountedWrites(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


@contextlib.contextmanager
def server_lines(delay: float) -> Iterator[tuple[RequestLines, CountedWrites]]:
    """The request logger's lines as `serve` sets them up (`LineHandler` fed by `RequestLines`),
    in JSON; other tests' handlers are left as they are."""
    stream = CountedWrites()
    handler = LineHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    batch = RequestLines(handler, delay=delay)
    handler.before_write = batch.flush
    level = request_logger.level
    request_logger.addHandler(handler)
    request_logger.setLevel(logging.INFO)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logs, "_request_lines", batch)
        try:
            yield batch, stream
        finally:
            request_logger.removeHandler(handler)
            request_logger.setLevel(level)


def written(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def request_line_for(request_id: str) -> None:
    """A request line made while ``request_id``'s request is served."""
    token = REQUEST_ID.set(request_id)
    try:
        request_line(logging.INFO, "POST /graphql 200", {"status": 200})
    finally:
        REQUEST_ID.reset(token)


async def test_request_lines_are_written_together_after_a_short_wait() -> None:
    with server_lines(delay=0.01) as (_, stream):
        request_line_for("batch-0001")
        request_line_for("batch-0002")
        assert stream.getvalue() == ""  # waiting for the lines that follow

        async def both_written() -> bool:
            return len(written(stream)) == 2

        await eventually(both_written)
    assert [line["request_id"] for line in written(stream)] == ["batch-0001", "batch-0002"]
    assert stream.writes == 1


async def test_other_lines_are_written_at_once_after_the_waiting_request_lines() -> None:
    with server_lines(delay=3600) as (batch, stream):
        request_line_for("batch-0003")
        token = REQUEST_ID.set("batch-0004")
        try:
            request_logger.warning("the client went away")
            request_line(logging.ERROR, "POST /graphql 500", {"status": 500})
        finally:
            REQUEST_ID.reset(token)
        assert [(line["level"], line["request_id"]) for line in written(stream)] == [
            ("info", "batch-0003"),
            ("warning", "batch-0004"),
            ("error", "batch-0004"),
        ]
        request_line_for("batch-0005")
        assert len(written(stream)) == 3
        batch.flush()
        assert written(stream)[-1]["request_id"] == "batch-0005"


def test_request_lines_made_outside_an_event_loop_are_written_at_once() -> None:
    with server_lines(delay=3600) as (_, stream):
        request_line_for("batch-0006")
        assert [line["request_id"] for line in written(stream)] == ["batch-0006"]


def test_waiting_lines_are_written_when_the_process_exits() -> None:
    script = (
        "import asyncio, logging\n"
        "from ragstream.observability import logs\n"
        "logs.configure_logging('json', 'info')\n"
        "logs._request_lines.delay = 3600\n"
        "async def serve():\n"
        "    token = logs.REQUEST_ID.set('exit-0001')\n"
        "    logs.request_line(logging.INFO, 'POST /graphql 200', {'status': 200})\n"
        "    logs.REQUEST_ID.reset(token)\n"
        "asyncio.run(serve())\n"
    )
    done = subprocess.run(  # noqa: S603  (this interpreter, a fixed script)
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    [line] = [json.loads(text) for text in done.stderr.splitlines()]
    assert (line["request_id"], line["status"]) == ("exit-0001", 200)


def test_request_ids_are_random_128_bits_and_not_shared_with_a_forked_child() -> None:
    scope: dict[str, Any] = {"headers": []}
    ids = [logs.request_id_for(scope) for _ in range(600)]  # more than one batch read
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    # A sane incoming id is kept, another one replaced.
    assert logs.request_id_for({"headers": [(b"x-request-id", b"client-id-1")]}) == "client-id-1"
    assert len(logs.request_id_for({"headers": [(b"x-request-id", b"bad id!")]})) == 32
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes its next id and leaves at once
        os.write(write, logs.request_id_for(scope).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        childs = pipe.read()
    assert len(childs) == 32
    assert childs != logs.request_id_for(scope)
