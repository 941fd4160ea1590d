"""Streaming answers through the real openai client against the stub server, over websockets."""

from __future__ import annotations

from pathlib import Path

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CONVERSATION,
    USAGE,
    chat_all,
    chat_server,
    joined,
    kinds,
    new_conversation,
    stored_message,
)

FULL = "Hello from the stub."


async def test_chat_streams_every_event_in_order_and_stores_the_answer(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Say hello")

        assert kinds(events)[0] == "GenerationStarted"
        assert kinds(events)[1] == "SourcesRetrieved"
        assert set(kinds(events)[2:-1]) == {"TokenDelta"}
        assert kinds(events)[-1] == "GenerationCompleted"
        started = events[0]
        assert started["userMessage"]["content"] == "Say hello"
        assert started["userMessage"]["status"] == "COMPLETE"
        answer = started["assistantMessage"]
        assert answer["status"] == "STREAMING"
        assert answer["content"] == ""
        assert all(e["messageId"] == answer["id"] for e in events[1:-1])
        assert joined(events) == FULL
        completed = events[-1]["message"]
        assert completed["id"] == answer["id"]
        assert completed["status"] == "COMPLETE"
        assert completed["content"] == FULL
        assert completed["model"] == "stub-model"
        # From the stub's usage chunk: five tokens streamed.
        assert completed["completionTokens"] == 5
        assert completed["promptTokens"] > 0

        stored = (
            await server.execute(CONVERSATION, {"id": conversation_id}, token=account.access_token)
        ).ok()["conversation"]["messages"]
        assert [e["node"]["role"] for e in stored["edges"]] == ["USER", "ASSISTANT"]
        assert stored["edges"][1]["node"] == completed
        usage = (await server.execute(USAGE, token=account.access_token)).ok()["me"]["usage"]
        assert usage["completionTokens"] == 5
        assert usage["promptTokens"] == completed["promptTokens"]
        assert usage["answers"] == 1
        assert usage["messagesToday"] == 1


async def test_tokens_are_estimated_when_the_provider_reports_no_usage(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(include_usage=False)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Say hello")

        message = events[-1]["message"]
        assert message["completionTokens"] == 5  # ceil(len("Hello from the stub.") / 4)
        assert message["promptTokens"] > 0
        stored = await stored_message(server, message["id"])
        assert stored["completion_tokens"] == 5
