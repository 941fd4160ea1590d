"""A database pool held busy: refusals are SERVER_BUSY (HTTP, chat) or close 1013 (websocket
connection_init), never an internal error; nothing is stored; an answer already admitted waits
for a connection instead of failing, and the lease is renewed on a connection of its own."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CHAT,
    CONVERSATION,
    SEND,
    USAGE,
    count_rows,
    new_conversation,
    openai_settings,
    send,
)
from tests.conftest import make_settings
from tests.support import LiveServer, running_server
from tests.test_websockets import close_code, init, raw_socket, receive, subscribe
from tests.test_websockets import send as send_message

TOKENS = ["one ", "two ", "three ", "four"]
POOL = 2
BUSY_EXTENSIONS = {"code": "RATE_LIMITED", "reason": "SERVER_BUSY"}


@pytest.fixture
async def small_pool(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> AsyncIterator[LiveServer]:
    """Two pooled connections (a send uses both: the request's, and its answer's), a short pool
    timeout; the stub holds each answer after 2 tokens."""
    chat_stub.script = ChatScript(tokens=TOKENS, hold_after=2)
    values = openai_settings(
        database_url,
        tmp_path,
        chat_stub,
        db_pool_size=POOL,
        db_max_overflow=0,
        db_pool_timeout=0.3,
        ingestion_worker=False,
    )
    settings = make_settings(database_url, tmp_path, **values)
    async with running_server(settings, listen=True) as server:
        yield server


@asynccontextmanager
async def pool_held(server: LiveServer) -> AsyncIterator[None]:
    """Every connection of the server's pool, checked out until the block ends."""
    async with AsyncExitStack() as stack:
        for _ in range(POOL):
            session = await stack.enter_async_context(server.state.sessionmaker())
            await session.connection()
        yield


def busy(error: dict[str, Any]) -> dict[str, Any]:
    return {key: error["extensions"].get(key) for key in BUSY_EXTENSIONS}


async def logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    """Until a log record contains ``text`` (bounded, so a bug cannot hang the run)."""
    for _ in range(3_000):
        if any(text in record.getMessage() for record in caplog.records):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never logged: {text}")


async def test_a_busy_pool_refuses_new_work_cleanly_and_delays_an_admitted_answer(
    small_pool: LiveServer, chat_stub: ChatStub, caplog: pytest.LogCaptureFixture
) -> None:
    server = small_pool
    account = await server.register()
    token = account.access_token
    conversation = await new_conversation(server, token)
    answer = await send(server, token, conversation, "first question")
    await chat_stub.wait_for_tokens(2)
    messages_before = await count_rows(server, "messages")
    conversations_before = await count_rows(server, "conversations")

    variables = {"input": {"conversationId": conversation, "content": "again"}}
    with caplog.at_level(logging.WARNING):
        async with raw_socket(server) as signed_in:
            await init(signed_in, {"authorization": f"Bearer {token}"})
            async with pool_held(server):
                # A websocket whose viewer cannot be checked in time: 1013, retryable.
                async with raw_socket(server) as ws:
                    await send_message(
                        ws,
                        {
                            "type": "connection_init",
                            "payload": {"authorization": f"Bearer {token}"},
                        },
                    )
                    assert await close_code(ws) == 1013
                    assert ws.close_reason == "Try again later"
                # A send, over HTTP and as a `chat` subscription: SERVER_BUSY.
                refused = await server.execute(SEND, variables, token=token)
                assert refused.data is None
                assert busy(refused.errors[0]) == BUSY_EXTENSIONS
                await send_message(signed_in, subscribe("1", CHAT, variables))
                chatted = await receive(signed_in)
                assert chatted["type"] == "error"
                assert busy(chatted["payload"][0]) == BUSY_EXTENSIONS
                # The running answer reaches its end and waits for a connection to store it.
                chat_stub.script.resume.set()
                await logged(caplog, f"the end of answer {answer['id']}")

    # Nothing the refusals touched was stored; the admitted answer ended normally.
    assert await count_rows(server, "messages") == messages_before
    assert await count_rows(server, "conversations") == conversations_before
    for _ in range(3_000):
        page = (await server.execute(CONVERSATION, {"id": conversation}, token=token)).ok()
        stored = page["conversation"]["messages"]["edges"][-1]["node"]
        if stored["status"] != "STREAMING":
            break
        await asyncio.sleep(0.01)
    assert stored["id"] == answer["id"]
    assert stored["status"] == "COMPLETE"
    assert stored["content"] == "".join(TOKENS)
    usage = (await server.execute(USAGE, token=token)).ok()["me"]["usage"]
    assert usage["messagesToday"] == 1
    internal = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert internal == []
    # The socket that was refused gave its place back.
    for _ in range(3_000):
        if server.state.sockets.open_for(uuid.UUID(account.id)) == 0:
            break
        await asyncio.sleep(0.01)
    assert server.state.sockets.open_for(uuid.UUID(account.id)) == 0


async def test_the_lease_is_renewed_while_the_pool_is_busy(small_pool: LiveServer) -> None:
    ownership = small_pool.state.chat.ownership
    async with pool_held(small_pool):
        # On the pool's connection this would time out; the lease has one of its own.
        assert await ownership.renew_and_sweep() == []
