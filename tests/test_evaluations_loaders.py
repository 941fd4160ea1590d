"""Nested evaluation fields: DataLoaders keep the SQL per request constant; depth is bounded."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from gql import GraphQLRequest
from graphql import parse
from sqlalchemy import event

from ragstream.schema.list_size import estimate_list_items
from tests.evaluations_support import count_statements, create_evaluation
from tests.support import Account, LiveServer

# Background work (e.g. a job queue polling) may share the engine; count what this feature reads.
FEATURE_TABLES = re.compile(r"\b(evaluations|users)\b", re.IGNORECASE)

PAGE_WITH_OWNERS = """query($first: Int) {
  evaluations(first: $first) {
    totalCount
    edges { cursor node { id title criteria { name score } overallScore
                          owner { id email displayName } } }
  }
}"""

PAGE_WITH_NESTED_EVALUATIONS = """query($first: Int) {
  evaluations(first: $first) {
    edges { node { id owner { id evaluations(first: 3) {
      totalCount
      pageInfo { hasNextPage endCursor }
      edges { node { id owner { id } } }
    } } } }
  }
}"""


def feature_statements(statements: list[str]) -> list[str]:
    return [s for s in statements if FEATURE_TABLES.search(s)]


async def seed_owners(
    server: LiveServer, owners: int, per_owner: int
) -> tuple[Account, list[Account]]:
    admin = await server.register()
    await server.make_admin(admin)
    accounts = [await server.register() for _ in range(owners)]
    for round_ in range(per_owner):
        for index, account in enumerate(accounts):
            await create_evaluation(
                server,
                account,
                title=f"owner {index} evaluation {round_}",
                criteria=[{"name": "Fit", "weight": 2, "score": 3}, {"name": "Cost"}],
            )
    return admin, accounts


async def run_counted(
    server: LiveServer, query: str, variables: dict[str, Any], token: str
) -> tuple[dict[str, Any], list[str]]:
    with count_statements(server) as statements:
        data = (await server.execute(query, variables, token=token)).ok()
    return data, feature_statements(statements)


async def test_statement_count_does_not_grow_with_the_page(server: LiveServer) -> None:
    admin, accounts = await seed_owners(server, owners=10, per_owner=5)

    small, small_sql = await run_counted(server, PAGE_WITH_OWNERS, {"first": 5}, admin.access_token)
    large, large_sql = await run_counted(
        server, PAGE_WITH_OWNERS, {"first": 50}, admin.access_token
    )

    assert len(small["evaluations"]["edges"]) == 5
    assert len(large["evaluations"]["edges"]) == 50
    owners = {e["node"]["owner"]["id"] for e in large["evaluations"]["edges"]}
    assert owners == {a.id for a in accounts}
    # The viewer, the count, and the page with every owner on it joined in (a compiled read).
    assert len(small_sql) == len(large_sql) == 3, large_sql


async def test_nested_user_evaluations_are_one_query_per_level(server: LiveServer) -> None:
    admin, _ = await seed_owners(server, owners=10, per_owner=5)

    small, small_sql = await run_counted(
        server, PAGE_WITH_NESTED_EVALUATIONS, {"first": 5}, admin.access_token
    )
    large, large_sql = await run_counted(
        server, PAGE_WITH_NESTED_EVALUATIONS, {"first": 50}, admin.access_token
    )

    assert len(small_sql) == len(large_sql), large_sql
    # The viewer, the page (not counted: level 1 does not select totalCount), its owners, and
    # one read of every owner's page (pages and counts in one statement); the owners of level 3
    # are the same accounts, already loaded for this request.
    assert len(large_sql) == 4, large_sql
    assert not any(s.startswith("SELECT count(*)") for s in large_sql), large_sql
    for edge in large["evaluations"]["edges"]:
        owner = edge["node"]["owner"]
        nested = owner["evaluations"]
        assert nested["totalCount"] == 5
        assert len(nested["edges"]) == 3
        assert nested["pageInfo"]["hasNextPage"] is True
        assert {e["node"]["owner"]["id"] for e in nested["edges"]} == {owner["id"]}
    assert len(small["evaluations"]["edges"]) == 5


async def test_nested_pages_follow_their_own_cursors(server: LiveServer) -> None:
    """Different `after` values for different owners in one request are batched correctly."""
    admin, accounts = await seed_owners(server, owners=2, per_owner=4)
    query = """query($a: ID!, $b: ID!, $afterA: String) {
      a: user(id: $a) { evaluations(first: 2, after: $afterA) { edges { node { title } } } }
      b: user(id: $b) { evaluations(first: 3) { totalCount edges { node { title } } } }
    }"""
    first_page = (
        await server.execute(
            "query($a: ID!) { user(id: $a) { evaluations(first: 2) { pageInfo { endCursor } } } }",
            {"a": accounts[0].id},
            token=admin.access_token,
        )
    ).ok()
    cursor = first_page["user"]["evaluations"]["pageInfo"]["endCursor"]

    data = (
        await server.execute(
            query,
            {"a": accounts[0].id, "b": accounts[1].id, "afterA": cursor},
            token=admin.access_token,
        )
    ).ok()

    assert [e["node"]["title"] for e in data["a"]["evaluations"]["edges"]] == [
        "owner 0 evaluation 1",
        "owner 0 evaluation 0",
    ]
    assert [e["node"]["title"] for e in data["b"]["evaluations"]["edges"]] == [
        "owner 1 evaluation 3",
        "owner 1 evaluation 2",
        "owner 1 evaluation 1",
    ]
    assert data["b"]["evaluations"]["totalCount"] == 4


async def test_owner_sees_only_themself_through_nested_fields(server: LiveServer) -> None:
    alice = await server.register()
    bob = await server.register()
    await create_evaluation(server, alice, title="alice's")
    await create_evaluation(server, bob, title="bob's")

    data = (await server.execute(PAGE_WITH_NESTED_EVALUATIONS, token=alice.access_token)).ok()

    edges = data["evaluations"]["edges"]
    assert len(edges) == 1
    owner = edges[0]["node"]["owner"]
    assert owner["id"] == alice.id
    assert owner["evaluations"]["totalCount"] == 1
    other = await server.execute(
        "query($id: ID!) { user(id: $id) { evaluations { totalCount } } }",
        {"id": bob.id},
        token=alice.access_token,
    )
    assert other.code == "NOT_FOUND"


LEGAL_DEPTH_10 = """{
  evaluations { edges { node { owner { evaluations { edges { node { owner {
    evaluations { edges { cursor } }
  } } } } } } } }
}"""

TOO_DEEP_11 = """{
  evaluations { edges { node { owner { evaluations { edges { node { owner {
    evaluations { edges { node { id } } }
  } } } } } } } }
}"""

TOO_DEEP_THROUGH_FRAGMENTS = """
fragment Loop on Evaluation { owner { evaluations { edges { node { ...Deeper } } } } }
fragment Deeper on Evaluation { owner { evaluations { edges { node { ...Deepest } } } } }
fragment Deepest on Evaluation { owner { evaluations { edges { node { id } } } } }
{ evaluations { edges { node { ...Loop } } } }
"""


async def test_legal_nested_query_works(server: LiveServer) -> None:
    account = await server.register()
    created = await create_evaluation(server, account, title="mine")

    data = (await server.execute(LEGAL_DEPTH_10, token=account.access_token)).ok()

    inner = data["evaluations"]["edges"][0]["node"]["owner"]["evaluations"]["edges"][0]["node"]
    assert inner["owner"]["evaluations"]["edges"][0]["cursor"]
    assert created["id"]


async def test_too_deep_query_is_rejected_before_any_resolver_runs(server: LiveServer) -> None:
    account = await server.register()
    await create_evaluation(server, account, title="mine")

    for query in (TOO_DEEP_11, TOO_DEEP_THROUGH_FRAGMENTS):
        with count_statements(server) as statements:
            result = await server.execute(query, token=account.access_token)
        assert result.code == "BAD_USER_INPUT"
        assert "depth" in result.errors[0]["message"]
        assert result.data is None
        # Not even the viewer was loaded: validation stopped the request.
        assert feature_statements(statements) == []


async def test_websocket_operations_never_see_earlier_reads(server: LiveServer) -> None:
    """A socket's loaders batch but do not cache: each operation reads the current rows."""
    account = await server.register(name="Before")
    created = await create_evaluation(server, account, title="Before")
    query = GraphQLRequest(
        "query($id: ID!) { evaluation(id: $id) { title owner { displayName "
        "evaluations { edges { node { title } } } } } }",
        variable_values={"id": created["id"]},
    )

    async with server.websocket(account.access_token) as socket:
        before = await socket.execute(query)
        await server.execute(
            'mutation { updateMe(input: {displayName: "After"}) { id } }',
            token=account.access_token,
        )
        await server.execute(
            'mutation($id: ID!) { updateEvaluation(id: $id, input: {title: "After"}) { id } }',
            {"id": created["id"]},
            token=account.access_token,
        )
        after = await socket.execute(query)

    assert before["evaluation"]["title"] == "Before"
    assert before["evaluation"]["owner"]["displayName"] == "Before"
    assert after["evaluation"]["title"] == "After"
    assert after["evaluation"]["owner"]["displayName"] == "After"
    assert after["evaluation"]["owner"]["evaluations"]["edges"] == [{"node": {"title": "After"}}]


async def test_websocket_pages_batch_owners_too(server: LiveServer) -> None:
    admin, _ = await seed_owners(server, owners=5, per_owner=4)

    async with server.websocket(admin.access_token) as socket:
        with count_statements(server) as small:
            await socket.execute(GraphQLRequest(PAGE_WITH_OWNERS, variable_values={"first": 2}))
        with count_statements(server) as large:
            data = await socket.execute(
                GraphQLRequest(PAGE_WITH_OWNERS, variable_values={"first": 20})
            )

    assert len(data["evaluations"]["edges"]) == 20
    assert len(feature_statements(small)) == len(feature_statements(large))


THREE_LEVELS = """query($first: Int) {
  evaluations(first: $first) { edges { node { owner {
    evaluations(first: $first) { edges { node { owner {
      evaluations(first: $first) { edges { cursor } }
    } } } }
  } } } }
}"""

TWO_LEVELS = """query($first: Int) {
  evaluations(first: $first) { edges { node { owner {
    evaluations(first: $first) { totalCount edges { node { id } } }
  } } } }
}"""


async def test_nested_lists_multiplying_rows_are_rejected_before_any_sql(
    server: LiveServer,
) -> None:
    account = await server.register()
    await create_evaluation(server, account, title="mine")

    for query, first in ((THREE_LEVELS, 100), (THREE_LEVELS, 25), (TWO_LEVELS, 100)):
        with count_statements(server) as statements:
            result = await server.execute(query, {"first": first}, token=account.access_token)
        assert result.code == "BAD_USER_INPUT", (query, first)
        assert result.errors[0]["extensions"]["field"] == "first"
        assert "list items" in result.errors[0]["message"]
        assert feature_statements(statements) == []

    # 50 + 50 * 50 items, and 20 + 20 * 20 + 20 * 20 * 20 with the default page size.
    assert (await server.execute(TWO_LEVELS, {"first": 50}, token=account.access_token)).ok()
    assert (await server.execute(THREE_LEVELS, token=account.access_token)).ok()


async def test_list_size_estimate_applies_variables_defaults_and_fragments(
    server: LiveServer,
) -> None:
    schema = server.state.schema._schema
    # Each fragment spreads the next one twice: measured once each, not 2**n times.
    chain = "\n".join(
        f"fragment F{i} on Evaluation {{ owner {{ id }} ...F{i + 1} ...F{i + 1} }}"
        for i in range(30)
    )
    document = parse(
        "query($n: Int = 7) { evaluations(first: $n) { edges { node { ...F0 } } } }\n"
        + chain
        + "\nfragment F30 on Evaluation { owner { evaluations(first: 3) { totalCount } } }"
    )

    default = estimate_list_items(schema, document, {})
    given = estimate_list_items(schema, document, {"n": 2})
    capped = estimate_list_items(schema, document, {"n": 100_000})

    spreads = 2**30  # F30 is reached along 2**30 paths, each asking for 3 evaluations
    assert default == 7 * (1 + spreads * 3)
    assert given == 2 * (1 + spreads * 3)
    assert capped == 100 * (1 + spreads * 3)


@contextlib.contextmanager
def feature_transactions(server: LiveServer) -> Iterator[list[tuple[int, str]]]:
    """(connection id, event) for every feature statement and every COMMIT/ROLLBACK that ends
    a transaction on a connection that ran one, while the block runs."""
    seen: list[tuple[int, str]] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if FEATURE_TABLES.search(sql):
            seen.append((id(conn.connection), "statement"))

    def ended(kind: str) -> Callable[[Any], None]:
        def record(conn: Any) -> None:
            if any(key == id(conn.connection) for key, _ in seen):
                seen.append((id(conn.connection), kind))

        return record

    engine = server.state.engine
    assert engine is not None
    listeners: list[tuple[str, Callable[..., None]]] = [
        ("before_cursor_execute", statement),
        ("commit", ended("commit")),
        ("rollback", ended("rollback")),
    ]
    for name, listener in listeners:
        event.listen(engine.sync_engine, name, listener)
    try:
        yield seen
    finally:
        for name, listener in listeners:
            event.remove(engine.sync_engine, name, listener)


async def test_a_read_only_request_is_one_connection_and_never_commits(
    server: LiveServer,
) -> None:
    admin, _ = await seed_owners(server, owners=2, per_owner=2)

    with feature_transactions(server) as seen:
        await run_counted(server, PAGE_WITH_OWNERS, {"first": 5}, admin.access_token)

    # The viewer, the count and the page with its owners (a compiled read, owners joined)
    # share one connection, taken without a session: no transaction, nothing commits.
    assert [kind for _, kind in seen] == ["statement"] * 3, seen
    assert len({key for key, _ in seen}) == 1, seen


async def test_a_write_commits_once(server: LiveServer) -> None:
    account = await server.register()

    with feature_transactions(server) as seen:
        await create_evaluation(server, account, title="Committed", criteria=[])

    assert [kind for _, kind in seen].count("commit") == 1, seen
