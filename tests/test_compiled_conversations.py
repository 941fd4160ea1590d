"""The conversation list answered from a compiled plan answers exactly as execution does: the
list and each conversation's page of messages (one statement), over a matrix of selections,
arguments at both levels, viewers and errors, against a server executing everything."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from ragstream.schema import compiled as compiled_reads
from tests.chat_support import count_rows, new_conversation
from tests.evaluations_support import count_statements
from tests.support import Account, LiveServer
from tests.test_compiled_reads import Pair, answer, assert_same, compiled
from tests.test_compiled_reads import pair as pair  # the fixture: the two servers

BENCH_CONVERSATIONS = (
    "{ conversations(first: 20) { edges { node { title "
    "messages(first: 5) { edges { node { content } } } } } } }"
)
_START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@dataclass
class World:
    admin: Account
    user: Account
    other: Account  # no conversation
    list_cursor: str  # a cursor of the admin's conversation list
    message_cursor: str  # a cursor of the messages of one of its conversations


async def add_messages(server: LiveServer, conversation_id: str, owner: Account, n: int) -> None:
    """``n`` messages written straight to the database, of every role, status and kind of
    value; the first two share their timestamp (their ids order them)."""
    rows = []
    for index in range(n):
        answer_ = index % 2 == 1
        # No STREAMING answer: the server would sweep it as left running by a stopped process.
        statuses = ("COMPLETE", "FAILED", "INTERRUPTED", "CANCELLED")
        status = statuses[index // 2 % 4] if answer_ else None
        rows.append(
            {
                "id": uuid.uuid4(),
                "conversation_id": uuid.UUID(conversation_id),
                "owner_id": uuid.UUID(owner.id),
                "role": "ASSISTANT" if answer_ else "USER",
                "content": f'Turn {index}: "quoted", ä, 漢字\n' if index != 3 else "",
                "status": status or "COMPLETE",
                "model": "stub-model" if answer_ else None,
                "prompt_tokens": 10 + index if answer_ else None,
                "completion_tokens": 20 + index if answer_ else None,
                "error_code": {"FAILED": "PROVIDER_TIMEOUT", "INTERRUPTED": "INTERRUPTED"}.get(
                    status or ""
                ),
                "created_at": _START + timedelta(seconds=max(index, 1)),
                "completed_at": None
                if status is None
                else _START + timedelta(seconds=index, milliseconds=500),
            }
        )
    async with server.state.sessionmaker.begin() as session:
        for row in rows:
            await session.execute(
                text(
                    "INSERT INTO messages (id, conversation_id, owner_id, role, content, status, "
                    "model, prompt_tokens, completion_tokens, error_code, created_at, "
                    "completed_at) VALUES (:id, :conversation_id, :owner_id, :role, :content, "
                    ":status, :model, :prompt_tokens, :completion_tokens, :error_code, "
                    ":created_at, :completed_at)"
                ),
                row,
            )


async def seed(server: LiveServer) -> World:
    admin = await server.register(name="Ada Admin")
    await server.make_admin(admin)
    user = await server.register(name="Uma User")
    other = await server.register(name="Otto Other")
    for account, sizes in ((admin, (6, 0, 3, 1, 6)), (user, (2, 6, 0))):
        for index, size in enumerate(sizes):
            conversation = await new_conversation(
                server, account.access_token, title=f"{account.email} #{index}"
            )
            await add_messages(server, conversation, account, size)
    async with server.state.sessionmaker.begin() as session:
        # Two of the admin's conversations started at the same moment: their ids order them.
        await session.execute(
            text(
                "UPDATE conversations SET created_at = :at WHERE id IN (SELECT id FROM "
                "conversations WHERE owner_id = :owner ORDER BY created_at LIMIT 2)"
            ),
            {"at": _START, "owner": uuid.UUID(admin.id)},
        )
    page = await server.execute(
        "{ conversations(first: 2) { pageInfo { endCursor } edges { node { "
        "messages(first: 2) { pageInfo { endCursor } } } } } }",
        token=admin.access_token,
    )
    data = page.ok()["conversations"]
    message_cursor = data["edges"][0]["node"]["messages"]["pageInfo"]["endCursor"]
    return World(admin, user, other, data["pageInfo"]["endCursor"], message_cursor)


MESSAGE_SELECTIONS = [
    "content",
    "__typename id conversationId role content status model promptTokens completionTokens "
    "errorCode createdAt completedAt",
    "...M",
    "c: content ... on Message { status s2: status }",
]
FRAGMENT_M = "fragment M on Message { id role errorCode completedAt }"
MESSAGES_SELECTIONS = [
    "edges {{ node {{ {message} }} }}",
    "totalCount edges {{ cursor node {{ {message} }} }} pageInfo {{ hasNextPage endCursor }}",
    "__typename pageInfo {{ __typename startCursor endCursor hasNextPage hasPreviousPage }} "
    "edges {{ __typename node {{ {message} }} cursor }} totalCount",
]
CONVERSATION_SELECTIONS = [
    "title messages(first: $mfirst, after: $mafter) {{ {messages} }}",
    "__typename id title createdAt updatedAt m: messages(first: $mfirst, after: $mafter) "
    "{{ {messages} }}",
    "...C",
]
LIST_SELECTIONS = [
    "edges {{ node {{ {conversation} }} }}",
    "totalCount pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} "
    "edges {{ cursor node {{ {conversation} }} }}",
]


def list_document(listing: str, conversation: str, messages: str, message: str) -> str:
    inner = messages.format(message=message)
    fragments = [FRAGMENT_M] if "...M" in message else []
    if conversation == "...C":
        fragments.append(
            "fragment C on Conversation { id "
            f"messages(first: $mfirst, after: $mafter) {{ {inner} }} }}"
        )
    else:
        conversation = conversation.format(messages=inner)
    body = listing.format(conversation=conversation)
    operation = (
        "query Page($first: Int, $after: String, $mfirst: Int, $mafter: String) "
        f"{{ list: conversations(first: $first, after: $after) {{ {body} }} }}"
    )
    return "\n".join([operation, *fragments])


def variable_sets(world: World) -> list[dict[str, Any]]:
    return [
        {},
        {"first": 2, "mfirst": 2},
        {"first": 2, "after": world.list_cursor, "mfirst": 3, "mafter": world.message_cursor},
        {"first": 0, "mfirst": 0},
        {"mfirst": 1, "mafter": world.message_cursor},
        {"after": "", "mafter": "", "mfirst": 100},
    ]


# The cross product is split by its outer two factors, so that test workers share it.
@pytest.mark.parametrize(
    ("listing", "conversation"),
    list(itertools.product(LIST_SELECTIONS, CONVERSATION_SELECTIONS)),
    ids=[
        f"list{i}-conversation{j}"
        for i, j in itertools.product(
            range(len(LIST_SELECTIONS)), range(len(CONVERSATION_SELECTIONS))
        )
    ],
)
async def test_conversation_list_selections_answer_the_same(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, listing: str, conversation: str
) -> None:
    # Every answer below must come from the plan: one that gave way to execution would answer
    # the same and prove nothing.
    gave_way: list[object] = []
    executed = compiled_reads._executed

    async def noted(*args: Any) -> dict[str, Any]:
        gave_way.append(args)
        return await executed(*args)

    monkeypatch.setattr(compiled_reads, "_executed", noted)
    world = await seed(pair.compiled)
    for messages, message in itertools.product(MESSAGES_SELECTIONS, MESSAGE_SELECTIONS):
        document = list_document(listing, conversation, messages, message)
        for variables in variable_sets(world):
            assert compiled(pair, document, variables), document
            for account in (world.admin, world.user):
                body = await assert_same(pair, document, variables, token=account.access_token)
                assert b'"errors"' not in body, body
                assert not gave_way, (document, variables)


async def test_the_list_holds_the_viewers_own_conversations_and_their_messages(
    pair: Pair,
) -> None:
    world = await seed(pair.compiled)
    document = (
        "{ conversations { totalCount edges { node { title messages { totalCount "
        "pageInfo { hasNextPage } edges { node { conversationId content } } } } } } }"
    )
    assert compiled(pair, document)
    seen: dict[str, set[str]] = {}
    for account, conversations in ((world.admin, 5), (world.user, 3), (world.other, 0)):
        body = await assert_same(pair, document, token=account.access_token)
        listing = orjson.loads(body)["data"]["conversations"]
        # An admin lists its own conversations, as anyone does; never another account's.
        assert listing["totalCount"] == len(listing["edges"]) == conversations
        titles = {edge["node"]["title"] for edge in listing["edges"]}
        assert all(title.startswith(f"{account.email} #") for title in titles)
        seen[account.email] = titles
        for edge in listing["edges"]:
            messages = edge["node"]["messages"]
            assert len(messages["edges"]) == messages["totalCount"]
            assert not messages["pageInfo"]["hasNextPage"]
    assert not seen[world.admin.email] & seen[world.user.email]
    sizes = orjson.loads(await assert_same(pair, document, token=world.admin.access_token))
    counts = [e["node"]["messages"]["totalCount"] for e in sizes["data"]["conversations"]["edges"]]
    assert sorted(counts) == [0, 1, 3, 6, 6]


async def test_the_list_and_its_messages_are_one_statement_after_the_viewer(pair: Pair) -> None:
    world = await seed(pair.compiled)
    assert compiled(pair, BENCH_CONVERSATIONS)
    with count_statements(pair.compiled, requests_only=True) as compiled_sql:
        body = await assert_same(pair, BENCH_CONVERSATIONS, token=world.admin.access_token)
    edges = orjson.loads(body)["data"]["conversations"]["edges"]
    assert [len(e["node"]["messages"]["edges"]) for e in edges].count(5) == 2
    # The viewer check, the conversations and their messages: one statement.
    assert len(compiled_sql) == 1, compiled_sql
    assert "viewer AS MATERIALIZED" in compiled_sql[0]
    assert "JOIN LATERAL" in compiled_sql[0]
    assert "message_sources" not in compiled_sql[0]
    with count_statements(pair.executed, requests_only=True) as executed_sql:
        await answer(pair.executed, BENCH_CONVERSATIONS, None, token=world.admin.access_token)
    assert len(executed_sql) > 2, executed_sql
    # Counted only when asked for: the viewer is then checked on its own first, and the count
    # is a statement of its own.
    counted = "{ conversations { totalCount edges { node { messages { totalCount } } } } }"
    with count_statements(pair.compiled, requests_only=True) as compiled_sql:
        await assert_same(pair, counted, token=world.user.access_token)
    assert len(compiled_sql) == 3, compiled_sql
    # Without messages, the page alone.
    titles = "{ conversations(first: 2) { edges { cursor node { id title } } } }"
    with count_statements(pair.compiled, requests_only=True) as compiled_sql:
        await assert_same(pair, titles, token=world.user.access_token)
    assert len(compiled_sql) == 1, compiled_sql
    assert "FROM messages" not in compiled_sql[0]


async def test_executed_the_list_is_counted_only_when_its_total_is_asked_for(
    pair: Pair,
) -> None:
    world = await seed(pair.compiled)
    token = world.user.access_token
    for document, counts in [
        ("{ conversations { edges { node { id } } } }", 0),
        ("{ conversations { totalCount edges { node { id } } } }", 1),
    ]:
        with count_statements(pair.executed, requests_only=True) as executed_sql:
            await assert_same(pair, document, token=token)
        assert sum("count(" in sql.lower() for sql in executed_sql) == counts, executed_sql


async def test_messages_follow_the_viewers_role_in_the_one_statement(pair: Pair) -> None:
    world = await seed(pair.compiled)
    # A message of another account in a conversation: an admin reads every message, anyone
    # else only their own (the rule of `MessageRepository.readable_by`).
    for account, intruder in ((world.admin, world.user), (world.user, world.other)):
        listing = await pair.compiled.execute(
            "{ conversations(first: 1) { edges { node { id } } } }", token=account.access_token
        )
        conversation = listing.ok()["conversations"]["edges"][0]["node"]["id"]
        await add_messages(pair.compiled, conversation, intruder, 1)
    document = (
        "{ conversations(first: 1) { edges { node { messages(first: 50) { "
        "edges { node { content conversationId } } } } } } }"
    )
    for account, shown in ((world.admin, True), (world.user, False)):
        with count_statements(pair.compiled, requests_only=True) as compiled_sql:
            body = await assert_same(pair, document, token=account.access_token)
        assert len(compiled_sql) == 1, compiled_sql
        (edge,) = orjson.loads(body)["data"]["conversations"]["edges"]
        contents = [e["node"]["content"] for e in edge["node"]["messages"]["edges"]]
        assert (contents.count('Turn 0: "quoted", ä, 漢字\n') == 2) is shown, contents


async def test_bad_arguments_at_either_level_fail_as_executed(pair: Pair) -> None:
    world = await seed(pair.compiled)
    document = list_document(
        LIST_SELECTIONS[1], CONVERSATION_SELECTIONS[1], MESSAGES_SELECTIONS[1], "content"
    )
    before = (
        await count_rows(pair.compiled, "conversations"),
        await count_rows(pair.compiled, "messages"),
    )
    bad: list[dict[str, Any]] = [
        {"first": -1},
        {"first": 101},
        {"after": "garbage"},
        {"after": "W10"},
        {"mfirst": -1},
        {"mfirst": 101},
        {"mafter": "garbage"},
        {"mafter": "WyIyMDI2IiwgMV0"},
        {"first": 101, "mafter": "garbage"},
    ]
    for variables in bad:
        for account in (world.admin, world.user):
            body = await assert_same(pair, document, variables, token=account.access_token)
            errors = orjson.loads(body)["errors"]
            assert [e["extensions"]["code"] for e in errors][:1] == ["BAD_USER_INPUT"], body
            if set(variables) <= {"mfirst", "mafter"}:
                assert errors[0]["path"][-1] == "m", body  # at a conversation's messages
            else:
                assert errors[0]["path"] == ["list"], body
    # An account with no conversation lists none, so a bad page of messages is never read.
    body = await assert_same(pair, document, {"mfirst": 101}, token=world.other.access_token)
    assert b'"errors"' not in body, body
    # Literal arguments, and a variable of the wrong type (refused before anything runs).
    for arguments in ("first: 101", 'after: "garbage"'):
        literal = f"{{ conversations({arguments}) {{ edges {{ node {{ title }} }} }} }}"
        assert compiled(pair, literal), literal
        body = await assert_same(pair, literal, token=world.user.access_token)
        assert orjson.loads(body)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    await assert_same(pair, document, {"mfirst": "two"}, token=world.user.access_token)
    after = (
        await count_rows(pair.compiled, "conversations"),
        await count_rows(pair.compiled, "messages"),
    )
    assert after == before


async def test_authentication_errors_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    tokens: list[str | None] = [None, "garbage", world.user.access_token[:-2] + "xx"]
    for token in tokens:
        body = await assert_same(pair, BENCH_CONVERSATIONS, token=token)
        assert orjson.loads(body)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    logout = "mutation($t: String!) { logout(refreshToken: $t) }"
    assert (await pair.compiled.execute(logout, {"t": world.user.refresh_token})).ok()
    body = await assert_same(pair, BENCH_CONVERSATIONS, token=world.user.access_token)
    assert orjson.loads(body)["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_what_the_plan_does_not_serve_is_executed_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    executed_only = [
        "{ conversations { edges { node { messages { edges { node { sources { title } } } } "
        "} } } }",
        "{ conversations { edges { node { evaluation { id } } } } }",
        "{ conversations { edges { node { a: messages(first: 1) { totalCount } "
        "b: messages(first: 2) { totalCount } } } } }",
        '{ conversations(evaluationId: "00000000-0000-0000-0000-000000000000") { totalCount } }',
        "query($i: Boolean!) { conversations { edges { node { title @include(if: $i) } } } }",
    ]
    for document in executed_only:
        variables = {"i": True} if "$i" in document else None
        assert not compiled(pair, document, variables), document
        for account in (world.admin, world.user):
            await assert_same(pair, document, variables, token=account.access_token)
    # The filter as a variable: the plan gives way at run time when it is not null.
    document = (
        "query($e: ID) { conversations(evaluationId: $e) { totalCount edges { node { title } } } }"
    )
    assert compiled(pair, document, {"e": None})
    assert not compiled(pair, document, {"e": str(uuid.uuid4())})
    filters: list[dict[str, Any]] = [{"e": None}, {"e": str(uuid.uuid4())}, {"e": "not-an-id"}]
    for filter_variables in filters:
        await assert_same(pair, document, filter_variables, token=world.admin.access_token)
    # With `me` beside it, both from the plan.
    both = "{ me { id } conversations(first: 1) { edges { node { title } } } }"
    assert compiled(pair, both)
    body = await assert_same(pair, both, token=world.user.access_token)
    assert b'"errors"' not in body
