"""Chat events rendered from a plan are exactly what graphql-core's execution produces.

Every case runs the same selection over the same events twice: once through graphql-core's
executor (execution per event) and once through ``RenderingExecutor`` (a plan made once, events
rendered from it). The JSON text must be identical, keys in the same order.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import strawberry
from graphql import ExecutionResult, GraphQLSchema, parse
from graphql.execution import Executor
from strawberry.schema.schema import StrawberryGraphQLCoreExecutionContext as Executed

from ragstream.domain.chat.enums import MessageRole, MessageStatus
from ragstream.schema import build_schema
from ragstream.schema.chat.types import (
    GenerationCompleted,
    GenerationStarted,
    Message,
    Source,
    SourcesRetrieved,
    TokenDelta,
    generation_failed,
)
from ragstream.schema.rendering import (
    Plan,
    RenderedData,
    RenderingExecutor,
    encode,
    next_text,
)
from ragstream.settings import Settings
from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import chat_server, new_conversation
from tests.metrics_support import scrape
from tests.test_persisted import persisted
from tests.test_websockets import raw_socket, send, sign_in

ANSWER = uuid.UUID("9b2f7f4e-3c1a-4f55-8f0e-2d6c1c9a0b11")
QUESTION = uuid.UUID("1c0e2b8a-77d4-4e0b-9a51-5e3f0c2d7a90")
CONVERSATION = uuid.UUID("0f6b5a4c-1d2e-4f3a-8b9c-7d6e5f4a3b2c")
DOCUMENT = uuid.UUID("5a4b3c2d-1e0f-4a9b-8c7d-6e5f4a3b2c1d")
WHEN = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=UTC)


def _message(
    id: uuid.UUID, role: MessageRole, status: MessageStatus, content: str, sources: list[Source]
) -> Message:
    ended = status is not MessageStatus.STREAMING
    return Message(
        id=strawberry.ID(str(id)),
        conversation_id=strawberry.ID(str(CONVERSATION)),
        role=role,
        content=content,
        status=status,
        sources=sources,
        model="stub-model" if role is MessageRole.ASSISTANT else None,
        prompt_tokens=12 if ended and role is MessageRole.ASSISTANT else None,
        completion_tokens=7 if ended and role is MessageRole.ASSISTANT else None,
        error_code=None,
        created_at=WHEN,
        completed_at=WHEN if ended else None,
    )


SOURCES = [
    Source(
        index=1,
        score=0.0328,
        title="Café \u2014 notes \U0001f600",
        excerpt='Quotes " and \\ backslashes\nand a newline',
        page=3,
        document_id=strawberry.ID(str(DOCUMENT)),
        chunk_id=None,
    ),
    Source(index=2, score=1.0, title="t", excerpt="", page=None, document_id=None, chunk_id=None),
]
QUESTION_MESSAGE = _message(QUESTION, MessageRole.USER, MessageStatus.COMPLETE, "Why?", [])
STARTED_ANSWER = _message(ANSWER, MessageRole.ASSISTANT, MessageStatus.STREAMING, "", [])
DONE_ANSWER = _message(
    ANSWER, MessageRole.ASSISTANT, MessageStatus.COMPLETE, "Because [1]. \u00e9\u00e8", SOURCES
)
ANSWER_ID = strawberry.ID(str(ANSWER))

EVENTS: list[object] = [
    GenerationStarted(user_message=QUESTION_MESSAGE, assistant_message=STARTED_ANSWER),
    SourcesRetrieved(message_id=ANSWER_ID, sources=SOURCES),
    TokenDelta(message_id=ANSWER_ID, offset=0, delta="Because"),
    TokenDelta(message_id=ANSWER_ID, offset=7, delta=' [1]. "\u00e9\u00e8"\n\t\\'),
    TokenDelta(message_id=ANSWER_ID, offset=7, delta=' [1]. "\u00e9\u00e8"\n\t\\'),  # seen again
    TokenDelta(message_id=ANSWER_ID, offset=20, delta="\U0001f600"),
    GenerationCompleted(message=DONE_ANSWER),
    generation_failed(ANSWER, "PROVIDER_TIMEOUT"),
    generation_failed(ANSWER, "SOMETHING_OLDER"),
]

CHAT = 'chat(input: {conversationId: "c", content: "q"})'
MESSAGE_FIELDS = (
    "id conversationId role content status model promptTokens completionTokens errorCode "
    "createdAt completedAt sources { index score title excerpt page documentId chunkId }"
)
EVERYTHING = f"""
  __typename
  ... on GenerationStarted {{ userMessage {{ {MESSAGE_FIELDS} }}
                              assistantMessage {{ {MESSAGE_FIELDS} }} }}
  ... on SourcesRetrieved {{ messageId sources {{ index score title excerpt page documentId }} }}
  ... on TokenDelta {{ messageId offset delta }}
  ... on GenerationCompleted {{ message {{ {MESSAGE_FIELDS} }} }}
  ... on GenerationFailed {{ messageId code reason }}
"""

# (query, variables, whether TokenDelta events are rendered rather than executed)
CASES: list[tuple[str, dict[str, Any] | None, bool]] = [
    (f"subscription {{ {CHAT} {{ {EVERYTHING} }} }}", None, True),
    (
        'subscription { messageStream(messageId: "m", fromOffset: 3) { '
        "... on TokenDelta { offset delta } } }",
        None,
        True,
    ),
    (f"subscription {{ {CHAT} {{ __typename }} }}", None, True),
    (f"subscription {{ events: {CHAT} {{ kind: __typename }} }}", None, True),
    (
        f"subscription {{ {CHAT} {{ ... on TokenDelta {{ d: delta o: offset d2: delta }} }} }}",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ... on TokenDelta {{ delta }} ... on TokenDelta "
        "{ offset delta __typename } } }",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ...Delta ...Done ...Failed }} }}\n"
        "fragment Delta on TokenDelta { messageId offset delta }\n"
        "fragment Done on GenerationCompleted { message { id status content sources { index } } }"
        "\nfragment Failed on GenerationFailed { code reason t: __typename }",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ...Any }} }}\n"
        "fragment Any on ChatEvent { __typename ... on TokenDelta { delta } ...Any2 }\n"
        "fragment Any2 on ChatEvent { ... on TokenDelta { offset } ...Any }",
        None,
        True,
    ),
    (
        f"subscription {{ ...Root }}\nfragment Root on Subscription {{ {CHAT} {{ __typename }} }}",
        None,
        True,
    ),
    (
        f"subscription {{ ... on Subscription {{ c: {CHAT} {{ ... {{ __typename }} }} }} }}",
        None,
        True,
    ),
    (
        f"subscription S($d: Boolean!, $o: Boolean!) {{ {CHAT} {{ ... on TokenDelta "
        "{ delta @include(if: $d) offset @skip(if: $o) messageId } } }",
        {"d": True, "o": True},
        True,
    ),
    (
        f"subscription S($d: Boolean!, $o: Boolean!) {{ {CHAT} {{ ... on TokenDelta "
        "{ delta @include(if: $d) offset @skip(if: $o) messageId } } }",
        {"d": False, "o": False},
        True,
    ),
    (
        f"subscription S($t: Boolean = true) {{ {CHAT} {{ ... on TokenDelta @include(if: $t) "
        "{ delta } ...F @skip(if: $t) }}\nfragment F on ChatEvent { __typename }",
        None,
        True,
    ),
    (
        f"subscription S($t: Boolean = true) {{ {CHAT} {{ ... on TokenDelta @include(if: $t) "
        "{ delta } ...F @skip(if: $t) }}\nfragment F on ChatEvent { __typename }",
        {"t": False},
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ... on TokenDelta {{ delta @skip(if: true) }} "
        "... on TokenDelta { delta @include(if: true) } } }",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ... on GenerationCompleted {{ message {{ id }} }} "
        "... on GenerationCompleted { message { content status id } } } }",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ... on GenerationStarted {{ a: assistantMessage {{ id }} "
        "a2: assistantMessage { status } userMessage { content role createdAt } } } }",
        None,
        True,
    ),
    # Fields the plan does not render (resolvers) make their event type execute instead.
    (
        f"subscription {{ {CHAT} {{ ... on SourcesRetrieved "
        "{ sources { index document { id } } } ... on TokenDelta { delta } } }",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ... on GenerationFailed {{ code message }} "
        "... on TokenDelta { offset } } }",
        None,
        True,
    ),
    (
        f"subscription {{ {CHAT} {{ ... on GenerationCompleted "
        "{ message { sources { chunk { id } } } } } }",
        None,
        True,
    ),
]


@cache
def _schema() -> GraphQLSchema:
    return build_schema(Settings(introspection=True))._schema


async def _run(
    executor_class: type[Executor[Any]], query: str, variables: dict[str, Any] | None
) -> list[ExecutionResult]:
    """Each event through the executor's per-event path, as a subscription does.

    There is no context: a field that resolves through the loaders (``Source.document``) fails
    with the same error on both paths, which the comparison then covers too.
    """
    executor = executor_class.build(_schema(), parse(query), raw_variable_values=variables)
    assert isinstance(executor, Executor), executor
    results = []
    for event in EVENTS:
        result = executor.build_per_event_executor(event).execute_operation(False)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, ExecutionResult)
        results.append(result)
    return results


def _text(result: ExecutionResult) -> str:
    return encode(result.formatted)


@pytest.mark.parametrize(("query", "variables", "delta_rendered"), CASES)
async def test_rendered_events_are_byte_identical_to_executed_ones(
    query: str, variables: dict[str, Any] | None, delta_rendered: bool
) -> None:
    executed = await _run(Executed, query, variables)
    rendered = await _run(RenderingExecutor, query, variables)

    assert [_text(r) for r in rendered] == [_text(r) for r in executed]
    for event, result in zip(EVENTS, rendered, strict=True):
        if isinstance(result.data, RenderedData):
            assert result.data.text == encode(result.data)
        if isinstance(event, TokenDelta):
            assert isinstance(result.data, RenderedData) is delta_rendered


async def test_every_event_type_is_rendered_for_a_plain_selection() -> None:
    rendered = await _run(RenderingExecutor, CASES[0][0], None)

    assert all(isinstance(r.data, RenderedData) for r in rendered)


async def test_a_field_with_a_resolver_is_executed_and_other_types_still_rendered() -> None:
    query = (
        f"subscription {{ {CHAT} {{ ... on SourcesRetrieved {{ sources {{ document {{ id }} }} }}"
        " ... on TokenDelta { delta } } }"
    )
    kinds = {
        type(event).__name__: isinstance(result.data, RenderedData)
        for event, result in zip(EVENTS, await _run(RenderingExecutor, query, None), strict=True)
    }

    assert kinds["SourcesRetrieved"] is False
    assert kinds["TokenDelta"] is True


def test_a_null_in_a_non_null_field_is_executed_and_reported_as_execution_does() -> None:
    query = f"subscription {{ {CHAT} {{ ... on TokenDelta {{ offset delta }} }} }}"
    broken = TokenDelta(message_id=ANSWER_ID, offset=0, delta=None)  # type: ignore[arg-type]
    outcomes = []
    for executor_class in (Executed, RenderingExecutor):
        executor = executor_class.build(_schema(), parse(query))
        assert isinstance(executor, Executor)
        result = executor.build_per_event_executor(broken).execute_operation(False)
        assert isinstance(result, ExecutionResult)
        assert not isinstance(result.data, RenderedData)
        outcomes.append(_text(result))

    assert outcomes[0] == outcomes[1]
    assert json.loads(outcomes[0])["errors"][0]["path"] == ["chat", "delta"]


def test_subscribers_with_the_same_selection_share_one_rendering_of_an_event() -> None:
    query = f"subscription {{ {CHAT} {{ ... on TokenDelta {{ offset delta }} }} }}"
    first = RenderingExecutor.build(_schema(), parse(query))
    second = RenderingExecutor.build(_schema(), parse(query))
    assert isinstance(first, RenderingExecutor)
    assert isinstance(second, RenderingExecutor)
    token = "shared text"

    one = first.build_per_event_executor(TokenDelta(message_id=ANSWER_ID, offset=4, delta=token))
    two = second.build_per_event_executor(TokenDelta(message_id=ANSWER_ID, offset=4, delta=token))

    results = [one.execute_operation(False), two.execute_operation(False)]
    assert isinstance(results[0], ExecutionResult)
    assert isinstance(results[1], ExecutionResult)
    assert isinstance(results[0].data, RenderedData)
    assert results[0].data is results[1].data


@pytest.mark.parametrize("operation_id", ["1", 'op "quoted" \u00e9', "\U0001f600"])
async def test_the_next_message_text_is_what_the_view_would_encode(operation_id: str) -> None:
    data = (await _run(RenderingExecutor, CASES[0][0], None))[3].data
    assert isinstance(data, RenderedData)

    assert next_text(operation_id, data) == encode(
        {"id": operation_id, "type": "next", "payload": {"data": data}}
    )


LIVE_CHAT = (
    "subscription Chat($input: SendMessageInput!) { chat(input: $input) { __typename"
    " ... on TokenDelta { offset delta } ... on GenerationCompleted { message { status } } } }"
)


async def test_a_chat_subscribed_by_its_hash_is_sent_rendered_counted_and_logged(
    database_url: str,
    tmp_path: Path,
    chat_stub: ChatStub,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The websocket's rendered path still runs under the trusted-document rules, the metrics
    and the per-operation log line: each next frame on the wire is the rendered text."""
    rendered: list[RenderedData] = []
    render = Plan.render

    def spy(plan: Plan, event: object, type_name: str) -> RenderedData | None:
        data = render(plan, event, type_name)
        assert data is not None
        rendered.append(data)
        return data

    monkeypatch.setattr(Plan, "render", spy)
    caplog.set_level(logging.INFO, logger="ragstream.requests")
    chat_stub.script = ChatScript(tokens=("One", " two", "."), delay=0.02)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation = await new_conversation(server, account.access_token)
        await server.listen()
        before = await scrape(server)
        frames: dict[str, list[str]] = {}
        async with raw_socket(server) as ws:
            await sign_in(ws, account)
            payloads: dict[str, dict[str, Any]] = {
                "register": {"query": LIVE_CHAT, "extensions": persisted(LIVE_CHAT)},
                "hit": {"extensions": persisted(LIVE_CHAT)},
            }
            for op_id, payload in payloads.items():
                variables = {"input": {"conversationId": conversation, "content": op_id}}
                await send(
                    ws,
                    {
                        "id": op_id,
                        "type": "subscribe",
                        "payload": {**payload, "variables": variables},
                    },
                )
                frames[op_id] = []
                while True:
                    text = await asyncio.wait_for(ws.recv(), timeout=30)
                    assert isinstance(text, str)
                    if json.loads(text)["type"] != "next":
                        assert json.loads(text) == {"id": op_id, "type": "complete"}
                        break
                    frames[op_id].append(text)
        after = await scrape(server)

    for op_id in ("register", "hit"):
        events = [json.loads(f)["payload"]["data"]["chat"] for f in frames[op_id]]
        assert events[0]["__typename"] == "GenerationStarted"
        assert "".join(e.get("delta", "") for e in events) == "One two."
        assert events[-1] == {
            "__typename": "GenerationCompleted",
            "message": {"status": "COMPLETE"},
        }
    # Every next frame on the wire is an event's rendered text, byte for byte.
    op_ids = ["register"] * len(frames["register"]) + ["hit"] * len(frames["hit"])
    sent = [next_text(op_id, data) for op_id, data in zip(op_ids, rendered, strict=True)]
    assert sent == frames["register"] + frames["hit"]
    operations = "ragstream_graphql_operation_duration_seconds_count"
    labels = {"operation": "Chat", "type": "subscription"}
    assert after.delta(before, operations, **labels, outcome="ok") == 2
    assert after.value("ragstream_subscriptions_active") == 0
    lines = [
        (r.operation, r.outcome, r.transport)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "ragstream.requests" and getattr(r, "operation", None) == "Chat"
    ]
    assert lines == [("Chat", "ok", "websocket")] * 2


@pytest.mark.parametrize(
    "value",
    [
        {"chat": {"__typename": "TokenDelta", "offset": 7, "delta": ' [1]. "\u00e9\u00e8"\n\t\\'}},
        {"a": [1, 2.5, -0.0, 1e16, 1e-7, 10**30, True, False, None], "\U0001f600": "\u2028"},
        {"n": float("nan"), "i": float("inf"), "j": float("-inf"), "nested": [[{}], []]},
        [],
        "plain",
    ],
)
def test_encode_writes_what_json_dumps_writes(value: object) -> None:
    assert encode(value) == json.dumps(value, separators=(",", ":"))
