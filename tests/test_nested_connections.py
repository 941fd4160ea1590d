"""Nested connections (Conversation.messages, Document.chunks) inside lists: batched per request.

A list of N parents reads the first pages of all of them in one statement, so the SQL per request
does not grow with N; the pages and cursors are the ones each parent's own page has.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from gql import GraphQLRequest
from sqlalchemy import text

from ragstream.db.models.users import User
from ragstream.db.pagination import encode_cursor
from ragstream.domain.chat import service as chat
from ragstream.domain.documents import service as documents
from ragstream.settings import Settings
from tests.chat_support import eventually, new_conversation, send, stored_message
from tests.conftest import make_settings
from tests.documents_support import create, wait_for_status
from tests.evaluations_support import count_statements
from tests.support import Account, LiveServer, Result

# Background work (ingestion, recovery) shares the engine; count what these reads touch.
FEATURE_TABLES = re.compile(
    r"\b(users|conversations|messages|message_sources|documents|chunks)\b", re.IGNORECASE
)
MESSAGE_TABLES = re.compile(r"\b(messages|message_sources)\b", re.IGNORECASE)
CHUNK_TABLES = re.compile(r"\bchunks\b", re.IGNORECASE)

PAGE = "totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }"
MESSAGE_PAGE = f"""{PAGE} edges {{ cursor node {{ id conversationId role content status
  sources {{ index title excerpt document {{ id title }} chunk {{ id ordinal }} }} }} }}"""
CHUNK_PAGE = f"{PAGE} edges {{ cursor node {{ id ordinal content page headingPath tokenCount }} }}"

CONVERSATIONS = f"""query($first: Int, $messages: Int) {{
  conversations(first: $first) {{
    totalCount
    edges {{ node {{ id title messages(first: $messages) {{ {MESSAGE_PAGE} }} }} }}
  }}
}}"""
CONVERSATION = f"""query($id: ID!, $first: Int, $after: String) {{
  conversation(id: $id) {{ messages(first: $first, after: $after) {{ {MESSAGE_PAGE} }} }}
}}"""
DOCUMENTS = f"""query($first: Int, $chunks: Int) {{
  documents(first: $first) {{
    edges {{ node {{ id title chunks(first: $chunks) {{ {CHUNK_PAGE} }} }} }}
  }}
}}"""
DOCUMENT = f"""query($id: ID!, $first: Int, $after: String) {{
  document(id: $id) {{ chunks(first: $first, after: $after) {{ {CHUNK_PAGE} }} }}
}}"""

Page = dict[str, Any]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    # Answers stream without pauses; no recovery sweep reads documents while statements are
    # being counted.
    return make_settings(
        database_url,
        tmp_path,
        extractive_word_delay_ms=0,
        ingestion_recovery_interval_seconds=3600,
    )


def matching(statements: list[str], tables: re.Pattern[str] = FEATURE_TABLES) -> list[str]:
    return [s for s in statements if tables.search(s)]


async def counted(
    server: LiveServer, query: str, variables: dict[str, Any], token: str
) -> tuple[dict[str, Any], list[str]]:
    with count_statements(server, requests_only=True) as statements:
        data = (await server.execute(query, variables, token=token)).ok()
    return data, matching(statements)


# --- Seeding ---------------------------------------------------------------------------------


async def _answered(server: LiveServer, message_id: str) -> bool:
    return bool((await stored_message(server, message_id))["status"] != "STREAMING")


async def chat_in(
    server: LiveServer, account: Account, conversation_id: str, exchanges: int
) -> None:
    """Questions and their (extractive) answers, one after the other."""
    for n in range(exchanges):
        answer = await send(
            server, account.access_token, conversation_id, f"Where do visitors park? ({n})"
        )
        await eventually(partial(_answered, server, answer["id"]))


async def conversations_with(
    server: LiveServer, account: Account, exchanges: list[int]
) -> list[str]:
    ids = []
    for index, count in enumerate(exchanges):
        conversation_id = await new_conversation(
            server, account.access_token, title=f"conversation {index}"
        )
        await chat_in(server, account, conversation_id, count)
        ids.append(conversation_id)
    return ids


def markdown(sections: int, label: str) -> str:
    return "\n\n".join(
        f"# {label} section {n}\n\nVisitors of {label} park in bay {n}. Bay {n} opens at {n} am."
        for n in range(sections)
    )


async def documents_with(
    server: LiveServer, account: Account, sections: list[int], *, visibility: str = "PRIVATE"
) -> list[str]:
    """Ready documents with the given numbers of chunks (one per markdown section)."""
    ids = []
    for index, count in enumerate(sections):
        created = (
            await create(
                server,
                account.access_token,
                markdown(count, f"{account.email} {index}"),
                title=f"document {index}",
                mime_type="text/markdown",
                visibility=visibility,
            )
        ).ok()["createDocument"]
        ids.append(str(created["id"]))
    for document_id in ids:
        document = await wait_for_status(server, account.access_token, document_id)
        assert document["status"] == "READY", document
    return ids


async def stored_order(server: LiveServer, sql: str, parent_id: str) -> list[tuple[str, str]]:
    """(id, cursor) of a parent's children in list order, read behind the API's back."""
    async with server.state.sessionmaker() as session:
        rows = (await session.execute(text(sql), {"parent": parent_id})).all()
    return [(str(row[0]), encode_cursor((row[1], row[0]))) for row in rows]


MESSAGE_ORDER = (
    "SELECT id, created_at FROM messages WHERE conversation_id = CAST(:parent AS uuid) "
    "ORDER BY created_at, id"
)
CHUNK_ORDER = (
    "SELECT id, ordinal FROM chunks WHERE document_id = CAST(:parent AS uuid) ORDER BY ordinal, id"
)


async def viewer_row(server: LiveServer, account: Account) -> User:
    async with server.state.sessionmaker() as session:
        user = await session.get(User, uuid.UUID(account.id))
    assert user is not None
    return user


# --- The statement count does not grow with the list ---------------------------------------


async def test_nested_messages_cost_the_same_statements_for_3_or_20_conversations(
    server: LiveServer,
) -> None:
    account = await server.register()
    await documents_with(server, account, [3])  # something to ground the answers on
    ids = await conversations_with(server, account, [1] * 20)

    small, small_sql = await counted(
        server, CONVERSATIONS, {"first": 3, "messages": 5}, account.access_token
    )
    large, large_sql = await counted(
        server, CONVERSATIONS, {"first": 20, "messages": 5}, account.access_token
    )

    assert len(small["conversations"]["edges"]) == 3
    assert {e["node"]["id"] for e in large["conversations"]["edges"]} == set(ids)
    for edge in large["conversations"]["edges"]:
        messages = edge["node"]["messages"]
        assert messages["totalCount"] == 2
        assert messages["pageInfo"]["hasNextPage"] is False
        nodes = [e["node"] for e in messages["edges"]]
        assert [n["role"] for n in nodes] == ["USER", "ASSISTANT"]
        assert {n["conversationId"] for n in nodes} == {edge["node"]["id"]}
        assert nodes[1]["sources"], nodes[1]
        assert all(s["document"] and s["chunk"] for s in nodes[1]["sources"])
    # The viewer; the conversations' count and page; every conversation's first page in one
    # statement and the sources of all those messages in another; then the loaders of the
    # sources: cited documents, their owners, cited chunks.
    assert len(small_sql) == len(large_sql) == 8, "\n\n".join(large_sql)
    assert len(matching(large_sql, MESSAGE_TABLES)) == 2, large_sql


async def test_nested_chunks_cost_the_same_statements_for_3_or_20_documents(
    server: LiveServer,
) -> None:
    account = await server.register()
    ids = await documents_with(server, account, [3] * 20)

    small, small_sql = await counted(
        server, DOCUMENTS, {"first": 3, "chunks": 2}, account.access_token
    )
    large, large_sql = await counted(
        server, DOCUMENTS, {"first": 20, "chunks": 2}, account.access_token
    )

    assert len(small["documents"]["edges"]) == 3
    assert {e["node"]["id"] for e in large["documents"]["edges"]} == set(ids)
    for edge in large["documents"]["edges"]:
        chunks = edge["node"]["chunks"]
        assert chunks["totalCount"] == 3
        assert chunks["pageInfo"]["hasNextPage"] is True
        assert [e["node"]["ordinal"] for e in chunks["edges"]] == [0, 1]
    # The viewer; the documents' count, page and owners; every document's first page.
    assert len(small_sql) == len(large_sql) == 5, large_sql
    assert len(matching(large_sql, CHUNK_TABLES)) == 1, large_sql


async def test_websocket_operations_batch_and_never_see_earlier_pages(server: LiveServer) -> None:
    account = await server.register()
    ids = await conversations_with(server, account, [1] * 6)

    async with server.websocket(account.access_token) as socket:
        with count_statements(server) as small:
            await socket.execute(
                GraphQLRequest(CONVERSATIONS, variable_values={"first": 2, "messages": 5})
            )
        with count_statements(server) as large:
            before = await socket.execute(
                GraphQLRequest(CONVERSATIONS, variable_values={"first": 6, "messages": 5})
            )
        await chat_in(server, account, ids[0], 1)
        after = await socket.execute(
            GraphQLRequest(CONVERSATIONS, variable_values={"first": 6, "messages": 5})
        )

    assert len(matching(small)) == len(matching(large))

    def totals(data: dict[str, Any]) -> dict[str, int]:
        return {
            e["node"]["id"]: e["node"]["messages"]["totalCount"]
            for e in data["conversations"]["edges"]
        }

    assert totals(before) == dict.fromkeys(ids, 2)
    assert totals(after) == {**dict.fromkeys(ids, 2), ids[0]: 4}


# --- Batched pages are the pages each parent has alone ---------------------------------------


async def walk(
    fetch: Callable[[str | None], Awaitable[Page]], first_page: Page
) -> list[tuple[str, str]]:
    """(id, cursor) of every item, following endCursor from ``first_page`` to the end."""
    page, items = first_page, list[tuple[str, str]]()
    total = page["totalCount"]
    while True:
        items += [(e["node"]["id"], e["cursor"]) for e in page["edges"]]
        assert page["totalCount"] == total
        if not page["pageInfo"]["hasNextPage"]:
            return items
        page = await fetch(page["pageInfo"]["endCursor"])
        assert page["pageInfo"]["hasPreviousPage"] is True


async def test_batched_message_pages_equal_each_conversations_own_pages(
    server: LiveServer,
) -> None:
    account = await server.register()
    await documents_with(server, account, [2])
    ids = await conversations_with(server, account, [0, 1, 3])
    token = account.access_token

    async def alone(conversation_id: str, after: str | None = None) -> Page:
        variables = {"id": conversation_id, "first": 2, "after": after}
        data = (await server.execute(CONVERSATION, variables, token=token)).ok()
        page: Page = data["conversation"]["messages"]
        return page

    listed = (await server.execute(CONVERSATIONS, {"messages": 2}, token=token)).ok()
    batched = {e["node"]["id"]: e["node"]["messages"] for e in listed["conversations"]["edges"]}

    assert set(batched) == set(ids)
    for conversation_id in ids:
        page = batched[conversation_id]
        assert page == await alone(conversation_id)
        assert page["pageInfo"]["hasPreviousPage"] is False
        expected = await stored_order(server, MESSAGE_ORDER, conversation_id)
        assert page["totalCount"] == len(expected)
        # The batch's cursors continue in the single-conversation list.
        assert await walk(partial(alone, conversation_id), page) == expected
    assert [batched[i]["totalCount"] for i in ids] == [0, 2, 6]
    assert batched[ids[0]]["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": False,
        "startCursor": None,
        "endCursor": None,
    }


async def test_one_request_mixes_first_pages_and_pages_after_a_cursor(server: LiveServer) -> None:
    account = await server.register()
    ids = await conversations_with(server, account, [2, 3])
    token = account.access_token
    first_a = (await server.execute(CONVERSATION, {"id": ids[0], "first": 1}, token=token)).ok()[
        "conversation"
    ]["messages"]
    query = f"""query($a: ID!, $b: ID!, $afterA: String) {{
      a: conversation(id: $a) {{ messages(first: 2, after: $afterA) {{ {MESSAGE_PAGE} }} }}
      b: conversation(id: $b) {{ messages(first: 3) {{ {MESSAGE_PAGE} }} }}
      again: conversation(id: $b) {{ messages(first: 1) {{ {MESSAGE_PAGE} }} }}
    }}"""

    data = (
        await server.execute(
            query,
            {"a": ids[0], "b": ids[1], "afterA": first_a["pageInfo"]["endCursor"]},
            token=token,
        )
    ).ok()

    order_a = await stored_order(server, MESSAGE_ORDER, ids[0])
    order_b = await stored_order(server, MESSAGE_ORDER, ids[1])
    a, b, again = (data[k]["messages"] for k in ("a", "b", "again"))
    assert [(e["node"]["id"], e["cursor"]) for e in a["edges"]] == order_a[1:3]
    assert a["pageInfo"]["hasPreviousPage"] is True
    assert a["pageInfo"]["hasNextPage"] is True
    assert [(e["node"]["id"], e["cursor"]) for e in b["edges"]] == order_b[:3]
    assert [(e["node"]["id"], e["cursor"]) for e in again["edges"]] == order_b[:1]
    assert (a["totalCount"], b["totalCount"], again["totalCount"]) == (4, 6, 6)


async def test_batched_chunk_pages_equal_each_documents_own_pages(server: LiveServer) -> None:
    account = await server.register()
    ids = await documents_with(server, account, [1, 3, 5])
    token = account.access_token

    async def alone(document_id: str, after: str | None = None) -> Page:
        variables = {"id": document_id, "first": 2, "after": after}
        data = (await server.execute(DOCUMENT, variables, token=token)).ok()
        page: Page = data["document"]["chunks"]
        return page

    listed = (await server.execute(DOCUMENTS, {"chunks": 2}, token=token)).ok()
    batched = {e["node"]["id"]: e["node"]["chunks"] for e in listed["documents"]["edges"]}

    assert set(batched) == set(ids)
    for document_id in ids:
        page = batched[document_id]
        assert page == await alone(document_id)
        expected = await stored_order(server, CHUNK_ORDER, document_id)
        assert page["totalCount"] == len(expected)
        assert await walk(partial(alone, document_id), page) == expected
    assert [batched[i]["totalCount"] for i in ids] == [1, 3, 5]
    assert [batched[i]["pageInfo"]["hasNextPage"] for i in ids] == [False, True, True]


# --- Authorization stays inside the statement -------------------------------------------------


async def test_another_users_messages_never_appear(server: LiveServer) -> None:
    alice = await server.register()
    bob = await server.register()
    admin = await server.register()
    await server.make_admin(admin)
    (mine,) = await conversations_with(server, alice, [1])
    (theirs,) = await conversations_with(server, bob, [2])

    listed = (await server.execute(CONVERSATIONS, token=alice.access_token)).ok()
    direct = await server.execute(CONVERSATION, {"id": theirs}, token=alice.access_token)

    edges = listed["conversations"]["edges"]
    assert [e["node"]["id"] for e in edges] == [mine]
    assert edges[0]["node"]["messages"]["totalCount"] == 2
    assert direct.code == "NOT_FOUND"
    assert direct.data is None

    # Below the API, the batch itself filters: Bob's conversation reads as empty for Alice,
    # whether as a first page or after a cursor, and in full for an admin.
    cursor = (await stored_order(server, MESSAGE_ORDER, theirs))[0][1]
    keys = [
        chat.message_page_key(uuid.UUID(theirs), first=5, after=None),
        chat.message_page_key(uuid.UUID(theirs), first=5, after=cursor),
        chat.message_page_key(uuid.UUID(mine), first=5, after=None),
    ]
    async with server.state.sessionmaker() as session:
        as_alice = await chat.message_pages(session, await viewer_row(server, alice), keys)
        as_admin = await chat.message_pages(session, await viewer_row(server, admin), keys)
    assert [(len(p.items), p.total_count) for p in as_alice] == [(0, 0), (0, 0), (2, 2)]
    assert [(len(p.items), p.total_count) for p in as_admin] == [(4, 4), (3, 4), (2, 2)]
    assert {m.owner_id for p in as_alice for m in p.items} == {uuid.UUID(alice.id)}


async def test_another_users_private_chunks_never_appear(server: LiveServer) -> None:
    alice = await server.register()
    bob = await server.register()
    admin = await server.register()
    await server.make_admin(admin)
    (own,) = await documents_with(server, alice, [2])
    (private,) = await documents_with(server, bob, [3])
    (shared,) = await documents_with(server, admin, [1], visibility="SHARED")

    listed = (await server.execute(DOCUMENTS, token=alice.access_token)).ok()
    direct = await server.execute(DOCUMENT, {"id": private}, token=alice.access_token)

    pages = {e["node"]["id"]: e["node"]["chunks"] for e in listed["documents"]["edges"]}
    assert {i: p["totalCount"] for i, p in pages.items()} == {own: 2, shared: 1}
    assert direct.code == "NOT_FOUND"

    cursor = (await stored_order(server, CHUNK_ORDER, private))[0][1]
    keys = [
        documents.chunk_page_key(uuid.UUID(private), first=5, after=None),
        documents.chunk_page_key(uuid.UUID(private), first=5, after=cursor),
        documents.chunk_page_key(uuid.UUID(shared), first=5, after=None),
        documents.chunk_page_key(uuid.UUID(own), first=5, after=None),
    ]
    async with server.state.sessionmaker() as session:
        as_alice = await documents.chunk_pages(session, await viewer_row(server, alice), keys)
        as_admin = await documents.chunk_pages(session, await viewer_row(server, admin), keys)
    assert [(len(p.items), p.total_count) for p in as_alice] == [(0, 0), (0, 0), (1, 1), (2, 2)]
    assert [(len(p.items), p.total_count) for p in as_admin] == [(3, 3), (2, 3), (1, 1), (2, 2)]


# --- Refused arguments read nothing ---------------------------------------------------------


async def refused(
    server: LiveServer, query: str, variables: dict[str, Any], token: str, tables: re.Pattern[str]
) -> tuple[Result, list[str]]:
    with count_statements(server) as statements:
        result = await server.execute(query, variables, token=token)
    return result, matching(statements, tables)


async def test_refused_nested_page_arguments_run_no_statement(server: LiveServer) -> None:
    account = await server.register()
    await conversations_with(server, account, [1, 1])
    await documents_with(server, account, [2, 2])
    token = account.access_token
    messages = "{ conversations { edges { node { id messages(%s) { totalCount } } } } }"
    chunks = "{ documents { edges { node { id chunks(%s) { totalCount } } } } }"

    for template, tables in ((messages, MESSAGE_TABLES), (chunks, CHUNK_TABLES)):
        for arguments, field in (
            ("first: 101", "first"),
            ("first: -1", "first"),
            ('after: "not a cursor"', "after"),
            ('first: 2, after: "WyJ4Il0"', "after"),  # a cursor of another list's shape
        ):
            result, statements = await refused(server, template % arguments, {}, token, tables)
            # Conversation.messages is non-null: the first error nulls the whole list.
            assert result.errors, arguments
            assert set(result.codes) == {"BAD_USER_INPUT"}, (arguments, result)
            assert {e["extensions"]["field"] for e in result.errors} == {field}
            assert statements == [], (arguments, statements)
