"""Websocket limits: message size (1009) and nesting (4400) before parsing, open sockets per
address and per user (4429), a database outage at connection_init (1011, logged)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from starlette.types import Message, Receive, Scope, Send

from ragstream.socket_limits import SocketRegistry, WebSocketLimitMiddleware
from tests.conftest import make_settings
from tests.database_faults import database_unreachable
from tests.support import LiveServer, running_server
from tests.test_websockets import close_code, init, raw_socket, receive, send, sign_in, subscribe

CREATE = """mutation($input: CreateEvaluationInput!) { createEvaluation(input: $input) { id } }"""


@pytest.fixture
async def limited(database_url: str, tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        database_url,
        tmp_path,
        max_body_bytes=4_000,
        ws_max_sockets_per_address=3,
        ws_max_sockets_per_user=2,
    )
    async with running_server(settings, listen=True) as server:
        yield server


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    """Sockets end to end: the handshake and every frame cross uvicorn."""
    return live_server


async def evaluation_count(server: LiveServer) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM evaluations")) or 0)


async def counted_out(count: Callable[[], int]) -> None:
    """Waits until the server has counted closed sockets out (it learns of closes a bit later)."""
    for _ in range(3_000):
        if count() == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("closed sockets are still counted")


async def released(server: LiveServer, address: str) -> None:
    await counted_out(lambda: server.state.sockets.open_at(address))


async def released_user(server: LiveServer, user_id: str) -> None:
    await counted_out(lambda: server.state.sockets.open_for(uuid.UUID(user_id)))


def create_message(notes: str) -> dict[str, Any]:
    return subscribe("1", CREATE, {"input": {"title": "t", "companyName": "c", "notes": notes}})


async def test_a_message_over_the_limit_closes_1009_and_runs_nothing(limited: LiveServer) -> None:
    account = await limited.register()
    async with raw_socket(limited) as ws:
        await sign_in(ws, account)
        await send(ws, create_message("x" * 4_000))
        assert await close_code(ws) == 1009
    assert await evaluation_count(limited) == 0

    # Counted in UTF-8 bytes: 1,500 three-byte characters are 4,500 bytes.
    async with raw_socket(limited) as ws:
        await sign_in(ws, account)
        await send(ws, create_message("\u20ac" * 1_500))
        assert await close_code(ws) == 1009
    assert await evaluation_count(limited) == 0

    async with raw_socket(limited) as ws:
        await sign_in(ws, account)
        await send(ws, create_message("x" * 3_000))
        assert (await receive(ws))["payload"]["data"]["createEvaluation"]["id"]
    assert await evaluation_count(limited) == 1


@pytest.mark.parametrize(
    "message",
    [
        '{"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }", "variables": '
        + '{"v": '
        + "[" * 100_000
        + "]" * 100_000
        + "}}}",
        '{"type": "connection_init", "payload": {"a": ' + "[" * 40 + "]" * 40 + "}}",
        "42",
        "null",
    ],
    ids=["nested-100000", "nested-init", "number", "null"],
)
async def test_deeply_nested_or_scalar_messages_close_4400(
    server: LiveServer, message: str
) -> None:
    async with raw_socket(server) as ws:
        if "connection_init" not in message:
            await init(ws)
        await ws.send(message)
        assert await close_code(ws) == 4400


async def test_unstorable_text_is_refused_per_operation(server: LiveServer) -> None:
    account = await server.register()
    async with raw_socket(server) as ws:
        await sign_in(ws, account)
        await send(ws, create_message("nul\x00"))
        error = await receive(ws)
        assert error["type"] == "error"
        assert error["payload"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "notes"}
        # The socket stays up.
        await send(ws, subscribe("2", "{ me { id } }"))
        assert (await receive(ws))["payload"]["data"]["me"]["id"] == account.id
    assert await evaluation_count(server) == 0


async def test_sockets_per_address_are_capped(limited: LiveServer) -> None:
    async with raw_socket(limited) as first, raw_socket(limited), raw_socket(limited):
        async with raw_socket(limited) as refused:
            assert await close_code(refused) == 4429
            assert refused.close_reason == "Too many open sockets"
        await send(first, {"type": "connection_init", "payload": {}})
        assert (await receive(first))["type"] == "connection_ack"
    await released(limited, "127.0.0.1")
    async with raw_socket(limited) as again:
        await init(again)


async def test_sockets_per_user_are_capped(limited: LiveServer) -> None:
    alice = await limited.register()
    bob = await limited.register()
    async with raw_socket(limited) as one, raw_socket(limited) as two:
        await sign_in(one, alice)
        await sign_in(two, alice)
        async with raw_socket(limited) as third:
            await send(
                third,
                {
                    "type": "connection_init",
                    "payload": {"authorization": f"Bearer {alice.access_token}"},
                },
            )
            assert await close_code(third) == 4429
        # The refused socket did not take a place: another user still gets in.
        async with raw_socket(limited) as other:
            await sign_in(other, bob)
    await released_user(limited, alice.id)
    async with raw_socket(limited) as again:
        await sign_in(again, alice)


async def test_a_database_outage_at_connection_init_closes_1011_and_is_logged(
    server: LiveServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    account = await server.register()
    request_id = "ws-outage-0001"
    payload = {"authorization": f"Bearer {account.access_token}"}
    async with (
        raw_socket(server, headers={"X-Request-ID": request_id}) as ws,
        database_unreachable(database_url),
    ):
        with caplog.at_level(logging.ERROR, logger="ragstream.errors"):
            await send(ws, {"type": "connection_init", "payload": payload})
            assert await close_code(ws) == 1011
            assert ws.close_reason == "Internal server error"
    records = [r for r in caplog.records if r.name == "ragstream.errors"]
    assert len(records) == 1
    assert request_id in records[0].getMessage()
    assert records[0].exc_info is not None
    # The failed socket gave its place back; the server answers once the database is back.
    async with raw_socket(server) as ws:
        await sign_in(ws, account)
    await released(server, "127.0.0.1")


async def test_a_reader_that_makes_no_room_is_closed_and_its_operations_end() -> None:
    # The server side of the socket, as uvicorn behaves with a client that stopped reading:
    # every send waits for the transport to drain, which never happens.
    never = asyncio.Event()
    attempted: list[Message] = []
    seen_by_app: list[Message] = []

    async def server_receive() -> Message:
        if not attempted:
            attempted.append({"type": "connected"})
            return {"type": "websocket.connect"}
        await never.wait()
        raise AssertionError("unreachable")

    async def server_send(message: Message) -> None:
        attempted.append(message)
        if message["type"] != "websocket.accept":
            await never.wait()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})

        async def stream_answer() -> None:
            await send({"type": "websocket.send", "text": "x" * 100_000})

        sending = asyncio.create_task(stream_answer())
        seen_by_app.append(await receive())  # the protocol handler's read loop
        await sending

    registry = SocketRegistry(per_address=5, per_user=5)
    middleware = WebSocketLimitMiddleware(
        app, registry=registry, max_message_bytes=1_000, send_timeout_seconds=0.2
    )
    scope: Scope = {"type": "websocket", "client": ("127.0.0.9", 5000), "subprotocols": []}
    async with asyncio.timeout(30):  # without the rule, the app would wait forever
        await middleware(scope, server_receive, server_send)

    assert seen_by_app == [{"type": "websocket.disconnect", "code": 1008}]
    closes = [m for m in attempted if m["type"] == "websocket.close"]
    assert closes == [{"type": "websocket.close", "code": 1008, "reason": "Client too slow"}]
    assert registry.open_at("127.0.0.9") == 0
