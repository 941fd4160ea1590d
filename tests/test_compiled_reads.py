"""Compiled reads answer exactly as execution does: every query of the test suite and a matrix
of list and `me` shapes, sent to two servers over one database (one compiling, one executing
everything), must get the same status, headers that matter and body, byte for byte."""

from __future__ import annotations

import ast
import itertools
import operator
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from graphql import (
    GraphQLError,
    ListTypeNode,
    NamedTypeNode,
    NonNullTypeNode,
    OperationDefinitionNode,
    OperationType,
    TypeNode,
    parse,
)

from ragstream.schema.compiled import (
    Env,
    Unsupported,
    _Completed,
    _Constant,
    _Leaf,
    _object_renderer,
    compiles,
)
from tests.conftest import make_settings
from tests.database_faults import end_connections
from tests.evaluations_support import count_statements, create_evaluation
from tests.support import Account, LiveServer, running_server

TESTS = Path(__file__).resolve().parent
REQUEST_ID = "equivalence-check"
BENCH_LIST = (
    "{ evaluations(first: 20) { edges { node { id title companyName status overallScore "
    "createdAt owner { displayName } } } } }"
)


@dataclass
class Pair:
    compiled: LiveServer
    executed: LiveServer


@pytest.fixture
async def pair(database_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    compiled_settings = make_settings(database_url, tmp_path / "compiled")
    executed_settings = make_settings(database_url, tmp_path / "executed", compiled_reads=False)
    async with (
        running_server(compiled_settings) as compiled,
        running_server(executed_settings) as executed,
    ):
        yield Pair(compiled, executed)


@dataclass
class World:
    admin: Account
    user: Account
    other: Account
    cursor: str  # a cursor of the admin's list
    evaluation_id: str


async def seed(server: LiveServer) -> World:
    admin = await server.register(name="Ada Admin")
    await server.make_admin(admin)
    user = await server.register(name="Uma User")
    other = await server.register(name="Otto Other")
    ids = []
    for account, count in ((admin, 2), (user, 4), (other, 3)):
        for index in range(count):
            scored = index % 2 == 0
            created = await create_evaluation(
                server,
                account,
                title=f"{account.email} #{index}",
                companyName=f"Company {index}",
                projectType="ERP_MIGRATION" if scored else "OTHER",
                notes='Shortlist: ä, 漢字, "quotes"' if scored else None,
                criteria=[{"name": "Fit", "weight": 2, "score": 3.5}, {"name": "Cost"}]
                if scored
                else [],
            )
            ids.append(created["id"])
    page = await server.execute(
        "{ evaluations(first: 3) { pageInfo { endCursor } } }", token=admin.access_token
    )
    cursor = page.ok()["evaluations"]["pageInfo"]["endCursor"]
    return World(admin, user, other, cursor, ids[0])


async def answer(
    server: LiveServer,
    document: str,
    variables: dict[str, Any] | None,
    *,
    token: str | None,
    operation_name: str | None = None,
    accept: str = "application/json",
) -> tuple[int, str | None, bytes]:
    headers = {"X-Request-ID": REQUEST_ID, "Accept": accept, "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body: dict[str, Any] = {"query": document}
    if variables is not None:
        body["variables"] = variables
    if operation_name is not None:
        body["operationName"] = operation_name
    async with server.http_client() as client:
        response = await client.post("/graphql", content=orjson.dumps(body), headers=headers)
    return response.status_code, response.headers.get("content-type"), response.content


async def assert_same(
    pair: Pair,
    document: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None,
    operation_name: str | None = None,
    accept: str = "application/json",
) -> bytes:
    compiled = await answer(
        pair.compiled,
        document,
        variables,
        token=token,
        operation_name=operation_name,
        accept=accept,
    )
    executed = await answer(
        pair.executed,
        document,
        variables,
        token=token,
        operation_name=operation_name,
        accept=accept,
    )
    assert compiled == executed, (document, variables)
    return compiled[2]


def compiled(pair: Pair, document: str, variables: dict[str, Any] | None = None) -> bool:
    return compiles(pair.compiled.state.schema._schema, parse(document), variables=variables)


# --- every query of the test suite -----------------------------------------------------------


def suite_documents() -> list[str]:
    """Every string literal in tests/ that parses as a document with a query operation."""
    found: dict[str, None] = {}
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
                continue
            text = node.value
            if "{" not in text:
                continue
            try:
                document = parse(text)
            except GraphQLError:
                continue
            if any(
                isinstance(d, OperationDefinitionNode) and d.operation is OperationType.QUERY
                for d in document.definitions
            ):
                found[text] = None
    return list(found)


def _named(type_: TypeNode) -> tuple[str, bool]:
    required = isinstance(type_, NonNullTypeNode)
    inner = type_.type if isinstance(type_, NonNullTypeNode) else type_
    if isinstance(inner, ListTypeNode):
        return "[]", required
    assert isinstance(inner, NamedTypeNode)
    return inner.name.value, required


def fill_variables(operation: OperationDefinitionNode, world: World) -> dict[str, Any]:
    """Plausible values for an operation's variables (the same for both servers)."""
    values: dict[str, Any] = {}
    for definition in operation.variable_definitions or ():
        name = definition.variable.name.value
        type_name, required = _named(definition.type)
        if type_name == "Int":
            values[name] = 2
        elif type_name == "ID":
            values[name] = world.evaluation_id
        elif type_name == "String":
            values[name] = "acme" if required else None
        elif type_name == "Boolean":
            values[name] = True
        elif required:
            values[name] = {}
    return values


def query_operations(text: str) -> list[tuple[OperationDefinitionNode, str | None]]:
    """A document's query operations, each with the name to send it under."""
    document = parse(text)
    several = len(document.definitions) > 1
    return [
        (d, d.name.value if d.name and several else None)
        for d in document.definitions
        if isinstance(d, OperationDefinitionNode) and d.operation is OperationType.QUERY
    ]


SHARDS = 2  # the suite's queries are split so that the parts run side by side


@pytest.mark.parametrize("shard", range(SHARDS))
async def test_every_query_in_the_suite_answers_the_same(pair: Pair, shard: int) -> None:
    world = await seed(pair.compiled)
    documents = suite_documents()[shard::SHARDS]
    assert len(documents) > 10  # the collection found the suite's queries
    for text in documents:
        for operation, name in query_operations(text):
            variables = fill_variables(operation, world)
            for token in (world.admin.access_token, world.user.access_token, None):
                await assert_same(pair, text, variables, token=token, operation_name=name)


async def test_some_of_the_suites_queries_take_the_compiled_path(pair: Pair) -> None:
    world = await seed(pair.compiled)
    planned = [
        text
        for text in suite_documents()
        for operation, name in query_operations(text)
        if compiles(
            pair.compiled.state.schema._schema,
            parse(text),
            operation_name=name,
            variables=fill_variables(operation, world),
        )
    ]
    # Some of the suite's own list and `me` queries, so the comparisons above cover both paths.
    assert len(planned) >= 5, planned


# --- a matrix of the shapes the plan serves --------------------------------------------------

NODE_SELECTIONS = [
    "id",
    "id title companyName status overallScore createdAt owner { displayName }",
    "__typename updatedAt notes projectType createdAt id",
    "criteria { name weight score notes __typename } overallScore",
    "t: title id2: id owner { __typename id email displayName role isActive createdAt }",
    "...E",
    "... on Evaluation { title ... on Evaluation { owner { ...U } } } id",
    "owner { id } title owner { email } title",
]
FRAGMENT_E = "fragment E on Evaluation { id status owner { ...U } }"
FRAGMENT_U = "fragment U on User { displayName email }"
CONNECTION_SELECTIONS = [
    "edges {{ node {{ {node} }} }}",
    "totalCount edges {{ cursor node {{ {node} }} }} pageInfo {{ hasNextPage endCursor }}",
    "__typename pageInfo {{ __typename startCursor endCursor hasNextPage hasPreviousPage }} "
    "edges {{ __typename node {{ {node} }} cursor }} totalCount",
]


def list_document(connection: str, node: str) -> str:
    body = connection.format(node=node)
    fragments = [FRAGMENT_E] if "...E" in node else []
    fragments += [FRAGMENT_U] if "...E" in node or "...U" in node else []
    operation = (
        "query Page($first: Int, $after: String) "
        f"{{ evaluations(first: $first, after: $after) {{ {body} }} }}"
    )
    return "\n".join([operation, *fragments])


async def test_list_selections_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    for connection, node in itertools.product(CONNECTION_SELECTIONS, NODE_SELECTIONS):
        document = list_document(connection, node)
        assert compiled(pair, document), document
        for token in (world.admin.access_token, world.user.access_token):
            for variables in ({"first": 2}, {"first": 2, "after": world.cursor}, {}):
                body = await assert_same(pair, document, variables, token=token)
                assert b'"errors"' not in body, body
                assert b'"edges":[{' in body, body


async def test_list_arguments_and_their_errors_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    document = list_document(CONNECTION_SELECTIONS[1], NODE_SELECTIONS[1])
    for first, after in itertools.product(
        [None, 0, 1, 3, 100, 101, -1],
        [None, "", world.cursor, "garbage", "W10", "WyIyMDI2IiwgMV0"],
    ):
        for token in (world.admin.access_token, world.user.access_token):
            await assert_same(pair, document, {"first": first, "after": after}, token=token)
    # Literal arguments, and variables of the wrong type (refused before anything runs).
    for arguments in ("first: 1", "first: 101", 'after: "garbage"', "", "first: null"):
        literal = f"{{ evaluations({arguments}) {{ totalCount edges {{ node {{ id }} }} }} }}"
        literal = literal.replace("evaluations()", "evaluations")
        assert compiled(pair, literal), literal
        await assert_same(pair, literal, token=world.user.access_token)
    await assert_same(pair, document, {"first": "two"}, token=world.user.access_token)


async def test_me_selections_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    documents = [
        "{ me { id } }",
        "{ me { __typename id email displayName role isActive createdAt } }",
        "query Me { who: me { name: displayName ...on User { email } } }",
        "{ me { id } again: me { role } }",
        "{ me { id } evaluations(first: 2) { totalCount edges { node { title } } } }",
        "{ a: evaluations(first: 1) { edges { node { id } } } "
        "b: evaluations(first: 2) { totalCount } }",
    ]
    for document in documents:
        assert compiled(pair, document), document
        for token in (world.admin.access_token, world.user.access_token):
            for accept in ("application/json", "application/graphql-response+json"):
                body = await assert_same(pair, document, token=token, accept=accept)
                assert body.startswith(b'{"data":{'), body
                assert b'"errors"' not in body, body


async def test_authentication_errors_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    documents = [
        "{ me { id } }",
        BENCH_LIST,
        "{ me { id } evaluations(first: 2) { totalCount } }",
        "{ evaluations(first: 101) { totalCount } me { id } }",
    ]
    tokens: list[str | None] = [None, "garbage", "", world.user.access_token[:-2] + "xx"]
    for document in documents:
        for token in tokens:
            for accept in ("application/json", "application/graphql-response+json"):
                await assert_same(pair, document, token=token, accept=accept)
    # A signed-out session and a deactivated account: their tokens still decode.
    logout = "mutation($t: String!) { logout(refreshToken: $t) }"
    assert (await pair.compiled.execute(logout, {"t": world.other.refresh_token})).ok()
    deactivate = "mutation($id: ID!) { updateUser(id: $id, input: {isActive: false}) { id } }"
    deactivated = await pair.compiled.execute(
        deactivate, {"id": world.user.id}, token=world.admin.access_token
    )
    assert deactivated.ok()
    for document in documents:
        for account in (world.other, world.user):
            body = await assert_same(pair, document, token=account.access_token)
            assert b'"UNAUTHENTICATED"' in body


async def test_operations_the_plan_does_not_serve_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    executed_only = [
        ("query($skip: Boolean!) { me { id email @skip(if: $skip) } }", {"skip": True}),
        ("{ evaluations(filter: {status: DRAFT}) { totalCount } }", None),
        (
            "{ evaluations(orderBy: {field: TITLE, direction: ASC}) { edges { node { title } } } }",
            None,
        ),
        ("{ __typename me { id } }", None),
        ("{ me { id usage { answers } } }", None),
        (
            "{ evaluations { edges { node { owner { evaluations(first: 1) { totalCount } } } } } }",
            None,
        ),
        (f'{{ me {{ id }} evaluation(id: "{world.evaluation_id}") {{ title }} }}', None),
    ]
    for document, variables in executed_only:
        assert not compiled(pair, document, variables), document
        for token in (world.admin.access_token, world.user.access_token, None):
            await assert_same(pair, document, variables, token=token)
    # A filter given as a variable: the plan gives way at run time when it is not null.
    document = (
        "query($filter: EvaluationFilter) { evaluations(filter: $filter) { totalCount "
        "edges { node { title status } } } }"
    )
    assert compiled(pair, document, {"filter": None})
    assert not compiled(pair, document, {"filter": {"status": "DRAFT"}})
    filters: list[dict[str, Any]] = [
        {"filter": None},
        {"filter": {"status": "DRAFT"}},
        {"filter": {"search": "#1"}},
    ]
    for filter_variables in filters:
        await assert_same(pair, document, filter_variables, token=world.admin.access_token)


async def test_several_operations_and_the_bench_query_answer_the_same(pair: Pair) -> None:
    world = await seed(pair.compiled)
    document = (
        "query A { me { id } }\n"
        "query B { evaluations(first: 2) { edges { node { id owner { id } } } } }\n"
        'mutation C { logout(refreshToken: "x") }'
    )
    for name in ("A", "B", "C", None, "D"):
        await assert_same(pair, document, token=world.admin.access_token, operation_name=name)
    assert compiled(pair, BENCH_LIST)
    body = await assert_same(pair, BENCH_LIST, token=world.admin.access_token)
    edges = orjson.loads(body)["data"]["evaluations"]["edges"]
    assert len(edges) == 9
    assert {e["node"]["owner"]["displayName"] for e in edges} == {
        "Ada Admin",
        "Uma User",
        "Otto Other",
    }


async def test_a_compiled_list_reads_the_viewer_and_its_owners_in_the_page_statement(
    pair: Pair,
) -> None:
    world = await seed(pair.compiled)
    for account in (world.admin, world.user):
        with count_statements(pair.compiled, requests_only=True) as compiled_sql:
            await assert_same(pair, BENCH_LIST, token=account.access_token)
        # The viewer, the page and its owners: one statement, against three when executed.
        assert len(compiled_sql) == 1, compiled_sql
        assert "JOIN LATERAL" in compiled_sql[0]
        assert "viewer AS MATERIALIZED" in compiled_sql[0]  # its flags read once
        assert "JOIN users" in compiled_sql[0]
    with count_statements(pair.executed, requests_only=True) as executed_sql:
        await answer(pair.executed, BENCH_LIST, None, token=world.admin.access_token)
    assert len(executed_sql) == 3, executed_sql
    # With its count, the viewer is checked on its own first, as before.
    counted = "{ evaluations(first: 2) { totalCount edges { node { id } } } }"
    with count_statements(pair.compiled, requests_only=True) as compiled_sql:
        await assert_same(pair, counted, token=world.user.access_token)
    assert len(compiled_sql) == 3, compiled_sql


async def test_a_compiled_list_reads_only_the_columns_its_selection_shows(pair: Pair) -> None:
    world = await seed(pair.compiled)
    wider = (
        "{ evaluations(first: 5) { edges { node { id notes projectType updatedAt "
        "owner { email role createdAt } } } } }"
    )
    for document, shown, not_read in (
        (
            BENCH_LIST,
            ("evaluations.title", "users.display_name"),
            ("evaluations.notes", "evaluations.project_type", "users.created_at"),
        ),
        (
            wider,
            ("evaluations.notes", "evaluations.project_type", "users.created_at"),
            ("evaluations.title", "evaluations.company_name", "users.display_name"),
        ),
    ):
        with count_statements(pair.compiled, requests_only=True) as compiled_sql:
            await assert_same(pair, document, token=world.admin.access_token)
        (page,) = compiled_sql
        page = page.split(" AS page", 1)[0].split("JOIN LATERAL", 1)[1]  # not the viewer's
        assert all(column in page for column in shown), page
        assert not any(column in page for column in not_read), page


async def test_a_list_read_with_its_viewer_follows_the_viewers_role(pair: Pair) -> None:
    world = await seed(pair.compiled)
    empty = await pair.compiled.register(name="Nora Nothing")
    document = list_document(CONNECTION_SELECTIONS[2], NODE_SELECTIONS[4])
    # A viewer with nothing to list still gets the viewer's row, with an empty page.
    for variables in ({"first": 2}, {}):
        body = await assert_same(pair, document, variables, token=empty.access_token)
        assert b'"edges":[]' in body, body
    mine = orjson.loads(await assert_same(pair, document, token=world.user.access_token))
    assert len(mine["data"]["evaluations"]["edges"]) == 4
    # Promoted, the same token reads every evaluation on its next request; demoted, its own.
    await pair.compiled.make_admin(world.user)
    pages: list[dict[str, Any]] = [{"first": 3}, {"first": 3, "after": world.cursor}, {}]
    for page in pages:
        body = await assert_same(pair, document, page, token=world.user.access_token)
        assert b'"errors"' not in body, body
    every = orjson.loads(await assert_same(pair, document, token=world.user.access_token))
    assert len(every["data"]["evaluations"]["edges"]) == 9
    demote = "mutation($id: ID!) { updateUser(id: $id, input: {role: USER}) { role } }"
    demoted = await pair.compiled.execute(
        demote, {"id": world.user.id}, token=world.admin.access_token
    )
    assert demoted.ok()["updateUser"]["role"] == "USER"
    again = orjson.loads(await assert_same(pair, document, token=world.user.access_token))
    assert again == mine


async def test_a_list_read_with_its_viewer_is_retried_once_on_a_new_connection(
    pair: Pair, database_url: str
) -> None:
    world = await seed(pair.compiled)
    expected = await assert_same(pair, BENCH_LIST, token=world.user.access_token)
    await end_connections(database_url)
    # The pooled connections are dead: the first statement fails, is invalidated and retried.
    with count_statements(pair.compiled, requests_only=True) as compiled_sql:
        status, _, body = await answer(
            pair.compiled, BENCH_LIST, None, token=world.user.access_token
        )
    assert (status, body) == (200, expected)
    assert len(compiled_sql) == 2, compiled_sql
    assert compiled_sql[0] == compiled_sql[1]


# --- prepared reads: a repeated document answered without the pipeline ----------------------


async def test_a_repeated_read_is_answered_prepared_in_the_same_bytes(pair: Pair) -> None:
    world = await seed(pair.compiled)
    prepared = pair.compiled.state.prepared
    assert prepared is not None
    assert pair.executed.state.prepared is None  # compiled reads off: no prepared reads either
    document = list_document(CONNECTION_SELECTIONS[1], NODE_SELECTIONS[1])
    admin = world.admin.access_token
    await assert_same(pair, document, {"first": 2}, token=admin)  # through the pipeline
    answered = prepared.answered
    for variables in ({"first": 2}, {"first": 3, "after": world.cursor}, {}):
        for accept in ("application/json", "application/graphql-response+json"):
            body = await assert_same(pair, document, variables, token=admin, accept=accept)
            assert b'"errors"' not in body, body
    assert prepared.answered == answered + 6
    # Every later request reads afresh: a new evaluation is in the next answer.
    before = orjson.loads(await assert_same(pair, document, {"first": 1}, token=admin))
    await create_evaluation(pair.compiled, world.admin, title="Added later")
    after = orjson.loads(await assert_same(pair, document, {"first": 1}, token=admin))
    count = after["data"]["evaluations"]["totalCount"]
    assert count == before["data"]["evaluations"]["totalCount"] + 1
    assert after["data"]["evaluations"]["edges"][0]["node"]["title"] == "Added later"
    assert prepared.answered == answered + 8


async def test_what_a_prepared_read_cannot_answer_the_pipeline_reports(pair: Pair) -> None:
    world = await seed(pair.compiled)
    prepared = pair.compiled.state.prepared
    assert prepared is not None
    document = list_document(CONNECTION_SELECTIONS[1], NODE_SELECTIONS[1])
    user = world.user.access_token
    await assert_same(pair, document, {"first": 2}, token=user)
    await assert_same(pair, document, {"first": 2}, token=user)
    answered = prepared.answered
    assert answered >= 1  # the document is prepared
    refused: list[tuple[dict[str, Any], str | None, str]] = [
        ({"first": 2}, None, "UNAUTHENTICATED"),
        ({"first": 2}, "garbage", "UNAUTHENTICATED"),
        ({"first": 2}, user[:-2] + "xx", "UNAUTHENTICATED"),
        ({"first": -1}, user, "BAD_USER_INPUT"),
        ({"first": 101}, user, "BAD_USER_INPUT"),
        ({"first": "two"}, user, "BAD_USER_INPUT"),
        ({"first": 2, "after": "garbage"}, user, "BAD_USER_INPUT"),
        ({"first": 2, "after": "bad\u0000cursor"}, user, "BAD_USER_INPUT"),
    ]
    for variables, token, code in refused:
        body = await assert_same(pair, document, variables, token=token)
        codes = [e["extensions"]["code"] for e in orjson.loads(body)["errors"]]
        assert codes == [code], (variables, body)
    assert prepared.answered == answered


async def test_a_prepared_read_measures_its_list_size_with_each_requests_variables(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, max_list_items=150)
    async with running_server(settings) as server:
        account = await server.register()
        prepared = server.state.prepared
        assert prepared is not None
        document = (
            "query($n: Int) { a: evaluations(first: $n) { edges { node { id } } } "
            "b: evaluations(first: $n) { edges { cursor } } }"
        )
        for _ in range(2):
            assert (await server.execute(document, {"n": 50}, token=account.access_token)).ok()
        answered = prepared.answered
        assert answered >= 1
        refused = await server.execute(document, {"n": 100}, token=account.access_token)
        assert refused.code == "BAD_USER_INPUT"
        assert "up to 200 list items" in refused.errors[0]["message"]
        assert refused.data is None
        assert prepared.answered == answered


def test_a_generated_renderer_completes_each_field_as_execution_does() -> None:
    """The renderer written for an object's selection: keys in the selection's order, leaves
    of their exact type returned as they are and others serialized, None where the field is
    nullable, and Unsupported (execution then reports the error) for a null in a non-null
    field or a leaf that serializes to nothing."""

    @dataclass
    class Source:
        id: Any
        score: Any
        child: Any

    render = _object_renderer(
        [
            ("__typename", _Constant("Thing")),
            ("score", _Leaf("score", lambda value: f"<{value}>", None, nullable=True)),
            ("id", _Leaf("id", str, str, nullable=False)),
            ("child", _Completed("child", lambda value, env: {"of": value}, nullable=True)),
            ("known", _Completed(lambda source, env: env, lambda value, env: value, False)),
        ]
    )
    env = Env()
    rendered = render(Source("a", 2, None), env)
    assert list(rendered) == ["__typename", "score", "id", "child", "known"]
    assert rendered == {
        "__typename": "Thing",
        "score": "<2>",
        "id": "a",
        "child": None,
        "known": env,
    }
    assert render(Source(7, None, 1), env)["id"] == "7"
    assert render(Source(7, None, 1), env)["child"] == {"of": 1}
    with pytest.raises(Unsupported, match="null in a non-null field"):
        render(Source(None, 2, None), env)
    nothing = _object_renderer([("x", _Leaf("id", lambda value: None, None, nullable=True))])
    with pytest.raises(Unsupported, match="serialized to nothing"):
        nothing(Source(1, 2, 3), env)
    assert nothing(Source(None, 2, 3), env) == {"x": None}


def test_a_generated_renderer_writes_datetimes_as_isoformat_does() -> None:
    """UTC datetimes are written by orjson in the generated renderer: the same text as the
    DateTime scalar's `isoformat`, for every kind of value (other time zones, subclasses and
    dates still go through the scalar's serializer)."""

    @dataclass
    class Source:
        at: Any

    class Later(datetime):
        def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
            return "later"

    isoformat = operator.methodcaller("isoformat")
    leaf = _Leaf("at", isoformat, None, nullable=False)
    assert leaf.isoformat
    assert not _Leaf("at", str, str, nullable=False).isoformat
    render = _object_renderer([("at", leaf)])
    plus_two = timezone(timedelta(hours=2, seconds=7))
    values: list[Any] = [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 30, 21, 15, 15, tzinfo=UTC),
        datetime(2026, 11, 30, 21, 15, 15, 10, tzinfo=UTC),
        datetime(2026, 11, 30, 21, 15, 15, 120000, tzinfo=UTC),
        datetime(2026, 11, 30, 21, 15, 15, 5, tzinfo=UTC, fold=1),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 11, 30, 21, 15, 15, 5, tzinfo=plus_two),
        datetime(2026, 11, 30, 21, 15, 15, 5),
        date(2026, 11, 30),
    ]
    for value in values:
        assert render(Source(value), Env()) == {"at": value.isoformat()}
    assert render(Source(Later(2026, 1, 1, tzinfo=UTC)), Env()) == {"at": "later"}
