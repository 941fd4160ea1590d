"""The server-wide cap on answers under way: RATE_LIMITED (SERVER_BUSY), nothing stored."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from ragstream.settings import Settings
from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CANCEL,
    CHAT,
    SEND,
    USAGE,
    chat_server,
    count_rows,
    new_conversation,
    send,
    subscription_error,
)
from tests.support import Account, LiveServer

# Long enough that nothing ends on its own while a test looks; every test cancels its answers.
SLOW = ChatScript(tokens=[f"t{i} " for i in range(2_000)], delay=0.02)


def send_input(conversation_id: str, content: str) -> dict[str, Any]:
    return {"input": {"conversationId": conversation_id, "content": content}}


async def cancel_all(server: LiveServer, answers: list[tuple[Account, str]]) -> None:
    for account, message_id in answers:
        result = await server.execute(CANCEL, {"id": message_id}, token=account.access_token)
        assert result.ok()["cancelGeneration"]["status"] == "CANCELLED"


def test_the_chat_takes_turns_on_most_of_the_database_pool(tmp_path: Path) -> None:
    def settings(**values: object) -> Settings:
        return Settings(data_dir=tmp_path, **values)  # type: ignore[arg-type]

    derived = settings(db_pool_size=10, db_max_overflow=10)
    small = settings(db_pool_size=1, db_max_overflow=0)
    explicit = settings(db_pool_size=10, db_max_overflow=10, chat_database_lanes=7)

    assert derived.chat_database_connections == 15
    assert small.chat_database_connections == 1
    assert explicit.chat_database_connections == 7
    assert derived.chat_max_active_generations == 1_000  # not derived from the pool


async def test_a_send_past_the_cap_is_refused_and_stores_nothing(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = SLOW
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_max_active_generations=2
    ) as server:
        first, second, third = [await server.register() for _ in range(3)]
        conversations = {
            a.id: await new_conversation(server, a.access_token) for a in (first, second, third)
        }
        running = [
            (a, (await send(server, a.access_token, conversations[a.id], "long one"))["id"])
            for a in (first, second)
        ]
        before = await count_rows(server, "messages")

        refused = await server.execute(
            SEND, send_input(conversations[third.id], "me too"), token=third.access_token
        )
        chatted = await subscription_error(
            server, third.access_token, CHAT, send_input(conversations[third.id], "me too")
        )

        assert refused.code == "RATE_LIMITED"
        assert refused.data is None
        assert refused.errors[0]["extensions"] == {
            "code": "RATE_LIMITED",
            "reason": "SERVER_BUSY",
            "limit": 2,
            "resetAt": None,
        }
        assert chatted["extensions"]["code"] == "RATE_LIMITED"
        assert chatted["extensions"]["reason"] == "SERVER_BUSY"
        assert await count_rows(server, "messages") == before
        usage = (await server.execute(USAGE, token=third.access_token)).ok()["me"]["usage"]
        assert usage["messagesToday"] == 0

        # One answer ends: its slot is free again.
        await cancel_all(server, running[:1])
        accepted = await send(server, third.access_token, conversations[third.id], "now")
        assert accepted["status"] == "STREAMING"
        assert await count_rows(server, "messages") == before + 2

        await cancel_all(server, [running[1], (third, accepted["id"])])
        assert server.state.chat.active == 0


async def test_concurrent_sends_never_overshoot_the_cap(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = SLOW
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_max_active_generations=2
    ) as server:
        accounts = [await server.register() for _ in range(6)]
        conversations = [await new_conversation(server, a.access_token) for a in accounts]

        results = await asyncio.gather(
            *(
                server.execute(SEND, send_input(c, "all at once"), token=a.access_token)
                for a, c in zip(accounts, conversations, strict=True)
            )
        )

        accepted = [
            (a, r.ok()["sendMessage"]["id"])
            for a, r in zip(accounts, results, strict=True)
            if not r.errors
        ]
        refused = [r.errors[0]["extensions"] for r in results if r.errors]
        assert len(accepted) == 2
        assert [(e["code"], e["reason"]) for e in refused] == [("RATE_LIMITED", "SERVER_BUSY")] * 4
        assert await count_rows(server, "messages") == 4

        await cancel_all(server, accepted)
        assert server.state.chat.active == 0


async def test_sends_refused_for_other_reasons_give_their_slot_back(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = SLOW
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_max_active_generations=1
    ) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        for _ in range(3):
            missing = await server.execute(
                SEND, send_input(str(uuid.uuid4()), "hello?"), token=account.access_token
            )
            empty = await server.execute(
                SEND, send_input(conversation_id, "   "), token=account.access_token
            )
            assert missing.code == "NOT_FOUND"
            assert empty.code == "BAD_USER_INPUT"

        accepted = await send(server, account.access_token, conversation_id, "hello")

        assert accepted["status"] == "STREAMING"
        assert await count_rows(server, "messages") == 2
        await cancel_all(server, [(account, accepted["id"])])
        assert server.state.chat.active == 0
