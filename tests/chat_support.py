"""Helpers for chat tests: a server wired to the chat stub, operations, event collection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from sqlalchemy import text

from tests.chat_stub import ChatStub
from tests.conftest import make_settings
from tests.support import LiveServer, running_server

# Generous guards against hangs; never asserted as performance limits.
WITHIN = 30.0

MESSAGE_FIELDS = """id conversationId role content status model promptTokens completionTokens
  errorCode createdAt completedAt
  sources { index score title excerpt page documentId chunkId
            document { id title } chunk { id } }"""

EVENT_FIELDS = f"""__typename
  ... on GenerationStarted {{ userMessage {{ {MESSAGE_FIELDS} }}
                              assistantMessage {{ {MESSAGE_FIELDS} }} }}
  ... on SourcesRetrieved {{ messageId sources {{ index documentId title score }} }}
  ... on TokenDelta {{ messageId offset delta }}
  ... on GenerationCompleted {{ message {{ {MESSAGE_FIELDS} }} }}
  ... on GenerationFailed {{ messageId code reason: message }}"""

CHAT = f"subscription($input: SendMessageInput!) {{ chat(input: $input) {{ {EVENT_FIELDS} }} }}"
MESSAGE_STREAM = f"""subscription($id: ID!, $from: Int) {{
  messageStream(messageId: $id, fromOffset: $from) {{ {EVENT_FIELDS} }}
}}"""
CREATE_CONVERSATION = """mutation($input: CreateConversationInput!) {
  createConversation(input: $input) { id title createdAt evaluation { id companyName } }
}"""
SEND = f"""mutation($input: SendMessageInput!) {{
  sendMessage(input: $input) {{ {MESSAGE_FIELDS} }}
}}"""
CANCEL = f"mutation($id: ID!) {{ cancelGeneration(messageId: $id) {{ {MESSAGE_FIELDS} }} }}"
CONVERSATION = f"""query($id: ID!, $first: Int, $after: String) {{
  conversation(id: $id) {{
    id title evaluation {{ id }}
    messages(first: $first, after: $after) {{
      totalCount pageInfo {{ hasNextPage endCursor }} edges {{ cursor node {{ {MESSAGE_FIELDS} }} }}
    }}
  }}
}}"""
USAGE = """{ me { usage { promptTokens completionTokens totalTokens answers messagesToday
  dailyMessageLimit resetsAt } } }"""
TERMINAL = ("GenerationCompleted", "GenerationFailed")


def openai_settings(
    database_url: str, data_dir: Path, stub: ChatStub, **overrides: object
) -> dict[str, object]:
    values: dict[str, object] = {
        "chat_provider": "openai",
        "embedding_provider": "hashing",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": stub.base_url,
        "chat_model": "stub-model",
        "chat_retry_backoff_seconds": 0.01,
        "chat_flush_interval_ms": 20,
    }
    values.update(overrides)
    return values


@contextlib.asynccontextmanager
async def chat_server(
    database_url: str, data_dir: Path, stub: ChatStub, **overrides: object
) -> AsyncIterator[LiveServer]:
    """A live server whose chat provider is the stub, through the real openai client."""
    values = openai_settings(database_url, data_dir, stub, **overrides)
    async with running_server(make_settings(database_url, data_dir, **values)) as live:
        yield live


async def new_conversation(
    server: LiveServer, token: str, *, evaluation_id: str | None = None, title: str = "Chat"
) -> str:
    data = (
        await server.execute(
            CREATE_CONVERSATION,
            {"input": {"title": title, "evaluationId": evaluation_id}},
            token=token,
        )
    ).ok()
    conversation_id: str = data["createConversation"]["id"]
    return conversation_id


async def send(server: LiveServer, token: str, conversation_id: str, content: str) -> Any:
    result = await server.execute(
        SEND, {"input": {"conversationId": conversation_id, "content": content}}, token=token
    )
    return result.ok()["sendMessage"]


async def subscribe_all(
    server: LiveServer,
    token: str,
    query: str,
    variables: dict[str, Any],
    into: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every event of one subscription until it completes (appended to ``into``, if given,
    as each arrives)."""
    events: list[dict[str, Any]] = [] if into is None else into
    async with asyncio.timeout(WITHIN), server.websocket(token) as session:
        async for data in session.subscribe(GraphQLRequest(query, variable_values=variables)):
            events.append(next(iter(data.values())))
    return events


async def subscription_error(
    server: LiveServer, token: str | None, query: str, variables: dict[str, Any]
) -> dict[str, Any]:
    """The single GraphQL error a subscription ends with."""
    async with asyncio.timeout(WITHIN), server.websocket(token) as session:
        with pytest.raises(TransportQueryError) as caught:
            await _drain(session, query, variables)
    errors = caught.value.errors or []
    assert len(errors) == 1, errors
    error: dict[str, Any] = errors[0]
    return error


async def _drain(session: Any, query: str, variables: dict[str, Any]) -> None:
    async for _ in session.subscribe(GraphQLRequest(query, variable_values=variables)):
        pass


async def chat_all(
    server: LiveServer, token: str, conversation_id: str, content: str
) -> list[dict[str, Any]]:
    return await subscribe_all(
        server, token, CHAT, {"input": {"conversationId": conversation_id, "content": content}}
    )


async def stream_all(
    server: LiveServer,
    token: str,
    message_id: str,
    from_offset: int = 0,
    into: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    return await subscribe_all(
        server, token, MESSAGE_STREAM, {"id": message_id, "from": from_offset}, into
    )


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["__typename"] for e in events]


def joined(events: list[dict[str, Any]], start: int = 0) -> str:
    """The text of the TokenDelta events, checking that their offsets are contiguous."""
    text = ""
    for event in events:
        if event["__typename"] == "TokenDelta":
            assert event["offset"] == start + len(text), (event, start, len(text))
            text += event["delta"]
    return text


async def eventually(check: Callable[[], Awaitable[bool]], within: float = WITHIN) -> None:
    """Polls ``check`` until it holds (a hang guard, not a timing assertion)."""
    async with asyncio.timeout(within):
        # The conditions live in the database or another process: there is no event to await.
        while not await check():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def stored_message(server: LiveServer, message_id: str) -> dict[str, Any]:
    """The row as the database has it, bypassing the API."""
    async with server.state.sessionmaker() as session:
        row = (
            await session.execute(
                text(
                    "SELECT status, content, error_code, prompt_tokens, completion_tokens "
                    "FROM messages WHERE id = :id"
                ),
                {"id": message_id},
            )
        ).one()
    return dict(row._mapping)


async def count_rows(server: LiveServer, table: str) -> int:
    async with server.state.sessionmaker() as session:
        value = await session.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
    return int(value or 0)
