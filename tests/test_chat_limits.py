"""Daily message quota and the cap on answers generated at once: RATE_LIMITED, nothing stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CANCEL,
    CHAT,
    CONVERSATION,
    SEND,
    USAGE,
    chat_all,
    chat_server,
    count_rows,
    eventually,
    new_conversation,
    send,
    stored_message,
    subscription_error,
)
from tests.support import LiveServer

DELETE = "mutation($id: ID!) { deleteConversation(id: $id) }"


def next_utc_midnight() -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).isoformat()


async def finish(server: LiveServer, message_id: str) -> None:
    async def done() -> bool:
        return bool((await stored_message(server, message_id))["status"] != "STREAMING")

    await eventually(done)


async def ask_twice(server: LiveServer, token: str, conversation_id: str) -> None:
    """Two questions, each answered to the end."""
    for content in ("first", "second"):
        answer = await send(server, token, conversation_id, content)
        await finish(server, answer["id"])


async def test_the_daily_limit_allows_exactly_the_limit(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub, daily_message_limit=2) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        await ask_twice(server, account.access_token, conversation_id)
        before = await count_rows(server, "messages")

        third = await server.execute(
            SEND,
            {"input": {"conversationId": conversation_id, "content": "third"}},
            token=account.access_token,
        )
        chatted = await subscription_error(
            server,
            account.access_token,
            CHAT,
            {"input": {"conversationId": conversation_id, "content": "third"}},
        )

        assert third.code == "RATE_LIMITED"
        extensions = third.errors[0]["extensions"]
        assert extensions["limit"] == 2
        assert extensions["resetAt"] == next_utc_midnight()
        assert extensions["reason"] == "DAILY_MESSAGE_LIMIT"
        assert chatted["extensions"]["code"] == "RATE_LIMITED"
        assert await count_rows(server, "messages") == before
        usage = (await server.execute(USAGE, token=account.access_token)).ok()["me"]["usage"]
        assert usage["messagesToday"] == 2
        assert usage["dailyMessageLimit"] == 2
        assert usage["resetsAt"] == next_utc_midnight()


async def test_deleting_conversations_does_not_reset_the_daily_limit(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub, daily_message_limit=2) as server:
        account = await server.register()
        first = await new_conversation(server, account.access_token)
        await ask_twice(server, account.access_token, first)
        (await server.execute(DELETE, {"id": first}, token=account.access_token)).ok()
        fresh = await new_conversation(server, account.access_token)

        third = await server.execute(
            SEND,
            {"input": {"conversationId": fresh, "content": "third"}},
            token=account.access_token,
        )

        assert third.code == "RATE_LIMITED"
        extensions = third.errors[0]["extensions"]
        assert extensions["reason"] == "DAILY_MESSAGE_LIMIT"
        assert extensions["limit"] == 2
        assert extensions["resetAt"] == next_utc_midnight()
        assert await count_rows(server, "messages") == 0
        messages = await server.execute(CONVERSATION, {"id": fresh}, token=account.access_token)
        assert messages.ok()["conversation"]["messages"]["totalCount"] == 0
        usage = (await server.execute(USAGE, token=account.access_token)).ok()["me"]["usage"]
        assert usage["messagesToday"] == 2


async def test_usage_totals_survive_deleting_conversations(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        await ask_twice(server, account.access_token, conversation_id)
        before = (await server.execute(USAGE, token=account.access_token)).ok()["me"]["usage"]

        (await server.execute(DELETE, {"id": conversation_id}, token=account.access_token)).ok()

        after = (await server.execute(USAGE, token=account.access_token)).ok()["me"]["usage"]
        assert before["promptTokens"] > 0
        assert before["completionTokens"] > 0
        assert before["answers"] == 2
        assert before["messagesToday"] == 2
        assert after == before


async def test_an_answer_deleted_while_it_runs_still_counts_its_tokens(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=[f"t{i} " for i in range(200)], delay=0.02)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        await send(server, account.access_token, conversation_id, "long one")
        await chat_stub.wait_for_tokens(2)

        # Returns once the answer is stopped and its end handled.
        (await server.execute(DELETE, {"id": conversation_id}, token=account.access_token)).ok()

        usage = (await server.execute(USAGE, token=account.access_token)).ok()["me"]["usage"]
        assert await count_rows(server, "messages") == 0
        assert usage["answers"] == 1
        assert usage["messagesToday"] == 1
        # The text streamed before the stop (a stopped answer's prompt is not counted yet).
        assert usage["completionTokens"] > 0


async def test_admins_are_exempt_from_the_daily_limit(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub, daily_message_limit=1) as server:
        admin = await server.register()
        await server.make_admin(admin)
        conversation_id = await new_conversation(server, admin.access_token)
        await ask_twice(server, admin.access_token, conversation_id)

        usage = (await server.execute(USAGE, token=admin.access_token)).ok()["me"]["usage"]

        assert usage["messagesToday"] == 2
        assert usage["dailyMessageLimit"] is None


async def test_concurrent_answers_per_user_are_capped(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=[f"t{i} " for i in range(200)], delay=0.02)
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_max_concurrent_generations=1
    ) as server:
        account = await server.register()
        other = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        running = await send(server, account.access_token, conversation_id, "long one")

        second = await server.execute(
            SEND,
            {"input": {"conversationId": conversation_id, "content": "another"}},
            token=account.access_token,
        )
        # The cap is per user: someone else is not affected.
        elsewhere = await new_conversation(server, other.access_token)
        theirs = await send(server, other.access_token, elsewhere, "mine")

        assert second.code == "RATE_LIMITED"
        extensions = second.errors[0]["extensions"]
        assert extensions["reason"] == "CONCURRENT_GENERATIONS"
        assert extensions["limit"] == 1
        assert theirs["status"] == "STREAMING"
        assert await count_rows(server, "messages") == 4

        await server.execute(CANCEL, {"id": running["id"]}, token=account.access_token)
        again = await send(server, account.access_token, conversation_id, "another")
        assert again["status"] == "STREAMING"
        for message_id in (again["id"], theirs["id"]):
            await server.execute(CANCEL, {"id": message_id}, token=account.access_token)
        await server.execute(CANCEL, {"id": theirs["id"]}, token=other.access_token)


async def test_an_answer_past_the_length_limit_ends_complete_with_the_marker(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    # 400 tokens of 10 characters: 4,000 characters against a limit of 1,000.
    chat_stub.script = ChatScript(tokens=["0123456789"] * 400)
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_max_answer_chars=1_000
    ) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go on and on")

        expected = "0123456789" * 100 + "\n\n[answer truncated at 1,000 characters]"
        completed = events[-1]["message"]
        assert completed["status"] == "COMPLETE"
        assert completed["content"] == expected
        assert "".join(e["delta"] for e in events if e["__typename"] == "TokenDelta") == expected
        stored = (
            await server.execute(CONVERSATION, {"id": conversation_id}, token=account.access_token)
        ).ok()["conversation"]["messages"]["edges"][1]["node"]
        assert stored["content"] == expected
