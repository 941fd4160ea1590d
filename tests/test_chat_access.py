"""Who may read and change conversations and answers; input validation; websocket auth."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import pytest
from gql.transport.exceptions import TransportConnectionFailed
from websockets.exceptions import ConnectionClosed

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CANCEL,
    CHAT,
    CONVERSATION,
    CREATE_CONVERSATION,
    MESSAGE_STREAM,
    SEND,
    WITHIN,
    chat_server,
    count_rows,
    eventually,
    new_conversation,
    send,
    stored_message,
    stream_all,
    subscription_error,
)
from tests.evaluations_support import count_statements
from tests.support import LiveServer


async def test_another_users_conversation_and_answer_are_not_found(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=[f"t{i} " for i in range(40)], delay=0.02)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        owner = await server.register()
        other = await server.register()
        conversation_id = await new_conversation(server, owner.access_token)
        answer = await send(server, owner.access_token, conversation_id, "Mine")
        messages_before = await count_rows(server, "messages")

        read = await server.execute(CONVERSATION, {"id": conversation_id}, token=other.access_token)
        listed = await server.execute("{ conversations { totalCount } }", token=other.access_token)
        sent = await server.execute(
            SEND,
            {"input": {"conversationId": conversation_id, "content": "Theirs?"}},
            token=other.access_token,
        )
        cancelled = await server.execute(CANCEL, {"id": answer["id"]}, token=other.access_token)
        deleted = await server.execute(
            "mutation($id: ID!) { deleteConversation(id: $id) }",
            {"id": conversation_id},
            token=other.access_token,
        )
        watched = await subscription_error(
            server, other.access_token, MESSAGE_STREAM, {"id": answer["id"], "from": 0}
        )
        chatted = await subscription_error(
            server,
            other.access_token,
            CHAT,
            {"input": {"conversationId": conversation_id, "content": "Theirs?"}},
        )

        assert read.code == "NOT_FOUND"
        assert listed.ok()["conversations"]["totalCount"] == 0
        assert sent.code == "NOT_FOUND"
        assert cancelled.code == "NOT_FOUND"
        assert deleted.code == "NOT_FOUND"
        assert watched["extensions"]["code"] == "NOT_FOUND"
        assert chatted["extensions"]["code"] == "NOT_FOUND"
        # Nothing changed: no message added, the answer still runs, the conversation exists.
        assert await count_rows(server, "messages") == messages_before
        assert await count_rows(server, "conversations") == 1
        await eventually(lambda: _complete(server, answer["id"]))


async def test_an_admin_may_read_and_watch_but_not_cancel_others_answers(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        owner = await server.register()
        admin = await server.register()
        await server.make_admin(admin)
        conversation_id = await new_conversation(server, owner.access_token)
        answer = await send(server, owner.access_token, conversation_id, "Hello")
        await eventually(lambda: _complete(server, answer["id"]))

        read = await server.execute(CONVERSATION, {"id": conversation_id}, token=admin.access_token)
        watched = await stream_all(server, admin.access_token, answer["id"])
        cancelled = await server.execute(CANCEL, {"id": answer["id"]}, token=admin.access_token)
        sent = await server.execute(
            SEND,
            {"input": {"conversationId": conversation_id, "content": "Admin here"}},
            token=admin.access_token,
        )

        assert read.ok()["conversation"]["messages"]["totalCount"] == 2
        assert watched[-1]["message"]["content"] == "Hello from the stub."
        assert cancelled.code == "NOT_FOUND"
        assert sent.code == "NOT_FOUND"


async def test_malformed_ids_are_not_found(server: LiveServer) -> None:
    account = await server.register()

    read = await server.execute(CONVERSATION, {"id": "not-a-uuid"}, token=account.access_token)
    cancelled = await server.execute(CANCEL, {"id": "42"}, token=account.access_token)
    watched = await subscription_error(
        server, account.access_token, MESSAGE_STREAM, {"id": "nope", "from": 0}
    )

    assert read.code == "NOT_FOUND"
    assert cancelled.code == "NOT_FOUND"
    assert watched["extensions"]["code"] == "NOT_FOUND"


async def test_chat_needs_a_signed_in_user(server: LiveServer) -> None:
    account = await server.register()
    conversation_id = await new_conversation(server, account.access_token)

    sent = await server.execute(
        SEND, {"input": {"conversationId": conversation_id, "content": "Hi"}}
    )
    chatted = await subscription_error(
        server, None, CHAT, {"input": {"conversationId": conversation_id, "content": "Hi"}}
    )

    assert sent.code == "UNAUTHENTICATED"
    assert chatted["extensions"]["code"] == "UNAUTHENTICATED"
    assert await count_rows(server, "messages") == 0


async def test_a_bad_websocket_token_is_refused(server: LiveServer) -> None:
    with pytest.raises(TransportConnectionFailed) as caught:
        async with asyncio.timeout(WITHIN), server.websocket("not.a.token"):
            pass
    closed = caught.value.__cause__
    assert isinstance(closed, ConnectionClosed)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 4403


async def test_inputs_are_validated(server: LiveServer) -> None:
    account = await server.register()
    conversation_id = await new_conversation(server, account.access_token)

    empty = await server.execute(
        SEND,
        {"input": {"conversationId": conversation_id, "content": "   "}},
        token=account.access_token,
    )
    too_long = await server.execute(
        SEND,
        {"input": {"conversationId": conversation_id, "content": "x" * 8_001}},
        token=account.access_token,
    )
    long_title = await server.execute(
        CREATE_CONVERSATION, {"input": {"title": "t" * 201}}, token=account.access_token
    )
    big_page = await server.execute(
        CONVERSATION, {"id": conversation_id, "first": 101}, token=account.access_token
    )
    bad_cursor = await server.execute(
        CONVERSATION, {"id": conversation_id, "after": "garbage"}, token=account.access_token
    )
    negative = await subscription_error(
        server, account.access_token, MESSAGE_STREAM, {"id": conversation_id, "from": -1}
    )

    assert empty.code == "BAD_USER_INPUT"
    assert empty.errors[0]["extensions"]["field"] == "content"
    assert too_long.code == "BAD_USER_INPUT"
    assert long_title.code == "BAD_USER_INPUT"
    assert long_title.errors[0]["extensions"]["field"] == "title"
    assert big_page.code == "BAD_USER_INPUT"
    assert bad_cursor.code == "BAD_USER_INPUT"
    assert negative["extensions"]["code"] == "BAD_USER_INPUT"
    assert await count_rows(server, "messages") == 0


async def test_conversations_and_messages_are_paginated(server: LiveServer) -> None:
    account = await server.register()
    ids = [await new_conversation(server, account.access_token, title=f"c{i}") for i in range(3)]
    for content in ("one", "two"):
        answer = await send(server, account.access_token, ids[0], content)
        await eventually(partial(_complete, server, answer["id"]))

    first = await server.execute(
        "{ conversations(first: 2) { totalCount pageInfo { hasNextPage endCursor } "
        "edges { node { id title } } } }",
        token=account.access_token,
    )
    page = first.ok()["conversations"]
    rest = await server.execute(
        "query($after: String) { conversations(first: 2, after: $after) { edges { node { id } } "
        "pageInfo { hasNextPage } } }",
        {"after": page["pageInfo"]["endCursor"]},
        token=account.access_token,
    )
    messages = await server.execute(
        CONVERSATION, {"id": ids[0], "first": 3}, token=account.access_token
    )

    assert page["totalCount"] == 3
    assert [e["node"]["title"] for e in page["edges"]] == ["c2", "c1"]  # newest first
    assert [e["node"]["id"] for e in rest.ok()["conversations"]["edges"]] == [ids[0]]
    listed = messages.ok()["conversation"]["messages"]
    assert listed["totalCount"] == 4
    assert listed["pageInfo"]["hasNextPage"] is True
    nodes = [e["node"] for e in listed["edges"]]
    assert [n["role"] for n in nodes] == ["USER", "ASSISTANT", "USER"]
    assert nodes[0]["content"] == "one"
    assert nodes[2]["content"] == "two"


async def _complete(server: LiveServer, message_id: str) -> bool:
    return bool((await stored_message(server, message_id))["status"] == "COMPLETE")


async def test_a_new_conversation_is_one_insert_with_its_stored_timestamps(
    server: LiveServer,
) -> None:
    account = await server.register()
    created_query = (
        "mutation($input: CreateConversationInput!) "
        "{ createConversation(input: $input) { id title createdAt updatedAt } }"
    )
    with count_statements(server, requests_only=True) as statements:
        created = (
            await server.execute(
                created_query, {"input": {"title": "Plans"}}, token=account.access_token
            )
        ).ok()["createConversation"]

    # The viewer check, then the INSERT, whose RETURNING brings the timestamps back.
    assert [s.split(None, 2)[:2] for s in statements] == [
        ["SELECT", "users.email,"],
        ["INSERT", "INTO"],
    ]
    read = (
        await server.execute(
            "query($id: ID!) { conversation(id: $id) { title createdAt updatedAt } }",
            {"id": created["id"]},
            token=account.access_token,
        )
    ).ok()["conversation"]
    assert read == {k: created[k] for k in ("title", "createdAt", "updatedAt")}
