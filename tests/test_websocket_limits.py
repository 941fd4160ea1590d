"""Websocket limits: message size (1009) and nesting (4400) before parsing, open sockets per
address and per user (4429), a database outage at connection_init (1011, logged), a client that
stops reading (1008) and messages handed over one at a time."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from starlette.types import Message, Receive, Scope, Send

from ragstream.socket_limits import SUBPROTOCOL, SocketRegistry, WebSocketLimitMiddleware
from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import chat_all, new_conversation, openai_settings
from tests.conftest import make_settings
from tests.database_faults import database_unreachable
from tests.support import LiveServer, running_server
from tests.test_websockets import close_code, init, raw_socket, receive, send, sign_in, subscribe

ME_ID = "{ me { id } }"
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
        app,
        registry=registry,
        max_message_bytes=1_000,
        send_timeout_seconds=0.2,
        close_wait_seconds=0.2,  # this transport never drains
    )
    scope: Scope = {"type": "websocket", "client": ("127.0.0.9", 5000), "subprotocols": []}
    async with asyncio.timeout(30):  # without the rule, the app would wait forever
        await middleware(scope, server_receive, server_send)

    assert seen_by_app == [{"type": "websocket.disconnect", "code": 1008}]
    closes = [m for m in attempted if m["type"] == "websocket.close"]
    assert closes == [{"type": "websocket.close", "code": 1008, "reason": "Client too slow"}]
    assert registry.open_at("127.0.0.9") == 0


STREAM_TEXT = """subscription($id: ID!) {
  messageStream(messageId: $id, fromOffset: 0) { ... on TokenDelta { offset delta } }
}"""


class StalledReader:
    """A websocket client on a bare socket with a small receive buffer: it reads nothing unless
    asked, so what the server sends piles up (as with a client that stopped reading)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, server: LiveServer) -> StalledReader:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: stays small
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16_384)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send(self, message: dict[str, Any]) -> None:
        payload = json.dumps(message).encode()
        assert len(payload) < 65_536
        mask = os.urandom(4)
        header = bytes([0x81]) + (
            bytes([0x80 | len(payload)])
            if len(payload) < 126
            else bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        )
        self.writer.write(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        await self.writer.drain()

    async def frame(self) -> tuple[int, bytes]:
        """The next frame the server sent: (opcode, payload)."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await self.reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await self.reader.readexactly(8), "big")
        return first & 0x0F, await self.reader.readexactly(length)

    async def message(self) -> dict[str, Any]:
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x1:
                message: dict[str, Any] = json.loads(payload)
                return message

    async def close_code(self) -> tuple[int, int]:
        """Reads on until the close frame: its code, and how many messages came first."""
        messages = 0
        while True:
            opcode, payload = await self.frame()
            if opcode == 0x8:
                return int.from_bytes(payload[:2], "big"), messages
            messages += opcode == 0x1

    def close(self) -> None:
        self.writer.close()


async def test_a_client_that_stops_reading_is_closed_1008_while_others_are_served(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    # A 200,000-character answer; the stalled client asks for all of it 50 times over (10 MB).
    chat_stub.script = ChatScript(tokens=["0123456789" * 100] * 200)
    values = openai_settings(
        database_url,
        tmp_path,
        chat_stub,
        chat_max_answer_chars=200_000,
        ws_send_timeout_seconds=1.0,
        ws_max_operations=60,
    )
    settings = make_settings(database_url, tmp_path, **values)
    async with running_server(settings, listen=True) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = (await chat_all(server, account.access_token, conversation_id, "Go on"))[-1]
        message_id, text_ = answer["message"]["id"], answer["message"]["content"]
        assert len(text_) == 200_000

        authorization = {"authorization": f"Bearer {account.access_token}"}
        async with raw_socket(server) as healthy:
            await sign_in(healthy, account)
            slow = await StalledReader.connect(server)
            try:
                await slow.send({"type": "connection_init", "payload": authorization})
                assert (await slow.message())["type"] == "connection_ack"
                for op in range(50):
                    await slow.send(subscribe(str(op), STREAM_TEXT, {"id": message_id}))

                # Served meanwhile: the other socket reads the whole answer, HTTP answers.
                await send(healthy, subscribe("2", STREAM_TEXT, {"id": message_id}))
                events = []
                while (message := await receive(healthy))["type"] != "complete":
                    events.append(message["payload"]["data"]["messageStream"])
                # Sources and completion carry none of the selected fields.
                assert events == [{}, {"offset": 0, "delta": text_}, {}]
                me = await server.execute("{ me { id } }", token=account.access_token)
                assert me.ok()["me"]["id"] == account.id

                # The server gives the stalled socket up (only the healthy one is still open);
                # once the client reads again, what was queued arrives, then the close frame.
                await counted_out(lambda: server.state.sockets.open_at("127.0.0.1") - 1)
                code, messages = await slow.close_code()
                assert code == 1008
                assert messages < 200  # 50 operations of 4 messages: not all were sent
            finally:
                slow.close()

            # The healthy socket is still served after the other one was closed.
            await send(healthy, subscribe("3", ME_ID))
            assert (await receive(healthy))["payload"]["data"]["me"]["id"] == account.id
        await released(server, "127.0.0.1")


async def test_operations_hand_their_messages_over_one_at_a_time() -> None:
    # uvicorn's transport: a send waits while the backlog is over its high-water mark, and when
    # the client has read, every waiting send goes through at once.
    writable = asyncio.Event()
    writable.set()
    backlog: list[str] = []
    stays_full = True

    async def server_receive() -> Message:
        return {"type": "websocket.connect"}

    async def server_send(message: Message) -> None:
        await writable.wait()
        if message["type"] == "websocket.send":
            backlog.append(message["text"])
            if stays_full:
                writable.clear()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await asyncio.gather(
            *(send({"type": "websocket.send", "text": f"answer {i}"}) for i in range(5))
        )

    middleware = WebSocketLimitMiddleware(
        app,
        registry=SocketRegistry(per_address=5, per_user=5),
        max_message_bytes=1_000,
        send_timeout_seconds=60,
    )
    scope: Scope = {"type": "websocket", "client": ("127.0.0.9", 5000), "subprotocols": []}
    running: asyncio.Future[None] = asyncio.ensure_future(
        middleware(scope, server_receive, server_send)
    )
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(backlog) == 1
    writable.set()  # the client read: room for one more message, not for all four
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(backlog) == 2

    stays_full = False
    writable.set()
    async with asyncio.timeout(30):
        await running
    assert sorted(backlog) == [f"answer {i}" for i in range(5)]
