"""Server-side generation: resume after a disconnect, cancel, delete while streaming."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gql import GraphQLRequest

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CANCEL,
    MESSAGE_STREAM,
    WITHIN,
    chat_server,
    count_rows,
    eventually,
    joined,
    kinds,
    new_conversation,
    send,
    stored_message,
    stream_all,
)
from tests.support import LiveServer

TOKENS = [f"word{i} " for i in range(30)]
FULL = "".join(TOKENS)


def slow(delay: float = 0.03) -> ChatScript:
    return ChatScript(tokens=TOKENS, delay=delay)


async def read_some(server: LiveServer, token: str, message_id: str, deltas: int) -> str:
    """Follows an answer until ``deltas`` TokenDeltas arrived, then disconnects."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(WITHIN), server.websocket(token) as session:
        request = GraphQLRequest(MESSAGE_STREAM, variable_values={"id": message_id, "from": 0})
        async for data in session.subscribe(request):
            events.append(data["messageStream"])
            if kinds(events).count("TokenDelta") >= deltas:
                break
    assert kinds(events)[0] == "SourcesRetrieved"
    return joined(events)


async def test_a_disconnected_client_resumes_with_exactly_the_missing_text(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = slow()
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = await send(server, account.access_token, conversation_id, "Count")
        assert answer["status"] == "STREAMING"

        received = await read_some(server, account.access_token, answer["id"], deltas=2)
        assert received
        assert FULL.startswith(received)

        # Resumed while the answer is still being generated: catch-up, then live deltas.
        resumed = await stream_all(server, account.access_token, answer["id"], len(received))

        assert kinds(resumed)[0] == "SourcesRetrieved"
        assert kinds(resumed)[1] == "TokenDelta"
        assert resumed[1]["offset"] == len(received)
        assert kinds(resumed)[-1] == "GenerationCompleted"
        assert received + joined(resumed, start=len(received)) == FULL
        assert resumed[-1]["message"]["content"] == FULL
        # Nobody stopped the provider call.
        assert chat_stub.abandoned == 0


async def test_resuming_a_finished_answer_sends_the_rest_and_the_end_at_once(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = await send(server, account.access_token, conversation_id, "Hello")
        await eventually(
            lambda: _status_is(server, answer["id"], "COMPLETE"),
        )

        events = await stream_all(server, account.access_token, answer["id"], 6)

        assert kinds(events) == ["SourcesRetrieved", "TokenDelta", "GenerationCompleted"]
        assert events[1] == {
            "__typename": "TokenDelta",
            "messageId": answer["id"],
            "offset": 6,
            "delta": "from the stub.",
        }
        past_the_end = await stream_all(server, account.access_token, answer["id"], 1000)
        assert kinds(past_the_end) == ["SourcesRetrieved", "GenerationCompleted"]


async def test_a_client_that_disconnects_does_not_stop_the_answer(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = slow(0.01)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        events: list[dict[str, Any]] = []
        variables = {"input": {"conversationId": conversation_id, "content": "Count"}}
        async with server.websocket(account.access_token) as session:
            request = GraphQLRequest(
                "subscription($input: SendMessageInput!) { chat(input: $input) { __typename "
                "... on GenerationStarted { assistantMessage { id } } } }",
                variable_values=variables,
            )
            async for data in session.subscribe(request):
                events.append(data["chat"])
                if len(events) == 2:
                    break
        answer_id = events[0]["assistantMessage"]["id"]

        await eventually(lambda: _status_is(server, answer_id, "COMPLETE"))

        assert (await stored_message(server, answer_id))["content"] == FULL
        assert chat_stub.abandoned == 0


async def test_cancel_stops_the_provider_and_keeps_the_partial_text(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = slow()
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = await send(server, account.access_token, conversation_id, "Count")
        watcher = asyncio.create_task(stream_all(server, account.access_token, answer["id"]))
        await chat_stub.wait_for_tokens(3)
        # What the provider sent may wait in the connection for the answer's next read (at most
        # a coalescing window): wait until the server saved the three tokens' text.
        three = len("".join(TOKENS[:3]))
        await eventually(lambda: _saved_at_least(server, answer["id"], three))

        result = await server.execute(CANCEL, {"id": answer["id"]}, token=account.access_token)

        cancelled = result.ok()["cancelGeneration"]
        assert cancelled["status"] == "CANCELLED"
        assert len(cancelled["content"]) >= len("".join(TOKENS[:3]))
        assert FULL.startswith(cancelled["content"])
        assert cancelled["content"] != FULL
        assert cancelled["completionTokens"] > 0
        stored = await stored_message(server, answer["id"])
        assert stored["status"] == "CANCELLED"
        assert stored["content"] == cancelled["content"]
        # The provider call itself was stopped.
        record = chat_stub.streams[-1]
        await eventually(lambda: _true(record.abandoned))
        # Whoever watched saw the end, with the cancelled message.
        watched = await watcher
        assert kinds(watched)[-1] == "GenerationCompleted"
        assert watched[-1]["message"]["status"] == "CANCELLED"
        assert joined(watched) == cancelled["content"]
        # Cancelling again changes nothing.
        again = await server.execute(CANCEL, {"id": answer["id"]}, token=account.access_token)
        assert again.ok()["cancelGeneration"] == cancelled


async def test_deleting_a_conversation_stops_its_running_answer(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = slow()
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = await send(server, account.access_token, conversation_id, "Count")
        watcher = asyncio.create_task(stream_all(server, account.access_token, answer["id"]))
        await chat_stub.wait_for_tokens(2)

        result = await server.execute(
            "mutation($id: ID!) { deleteConversation(id: $id) }",
            {"id": conversation_id},
            token=account.access_token,
        )

        assert result.ok()["deleteConversation"] == conversation_id
        watched = await watcher
        assert watched[-1]["__typename"] == "GenerationFailed"
        assert watched[-1]["code"] == "CONVERSATION_DELETED"
        assert await count_rows(server, "messages") == 0
        assert await count_rows(server, "conversations") == 0
        record = chat_stub.streams[-1]
        await eventually(lambda: _true(record.abandoned))


async def _saved_at_least(server: LiveServer, message_id: str, chars: int) -> bool:
    return len((await stored_message(server, message_id))["content"]) >= chars


async def _status_is(server: LiveServer, message_id: str, status: str) -> bool:
    return bool((await stored_message(server, message_id))["status"] == status)


async def _true(value: bool) -> bool:
    return value
