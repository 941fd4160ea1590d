"""The GraphQL surface: query limits, suggestions, introspection and the masking of surprises."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from graphql import DocumentNode, get_introspection_query, parse, print_ast
from sqlalchemy import text
from strawberry.extensions.parser_cache import _get_parse_cache
from strawberry.extensions.validation_cache import _get_validate_cache

from ragstream.schema.fragments import PerDocument
from tests import raw
from tests.conftest import make_settings
from tests.database_faults import database_of, database_unreachable, end_connections
from tests.support import PASSWORD, LiveServer, Result, running_server


def nested(depth: int, leaf: str = "id") -> str:
    """`me` with ``depth`` selection sets below the root (`{ me { id } }` is depth 1)."""
    inner = leaf
    for level in range(depth - 1, 0, -1):
        inner = f"f{level} {{ {inner} }}"
    return f"me {{ {inner} }}"


def messages(result: Result) -> str:
    return " | ".join(e["message"] for e in result.errors)


async def user_count(server: LiveServer) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM users")) or 0)


def register_with(selection: str, email: str = "deep@example.com") -> str:
    return (
        f'mutation {{ register(input: {{email: "{email}", password: "{PASSWORD}", '
        f'displayName: "D"}}) {{ {selection} }} }}'
    )


# --- depth ---------------------------------------------------------------------------------


async def test_depth_11_is_rejected_and_10_is_not(server: LiveServer) -> None:
    too_deep = await server.execute(f"{{ {nested(11)} }}")
    assert too_deep.code == "BAD_USER_INPUT"
    assert "exceeds maximum operation depth of 10" in too_deep.errors[0]["message"]
    assert too_deep.data is None

    # Depth 10 passes the limit (and then fails ordinary validation on the made-up fields).
    at_limit = await server.execute(f"{{ {nested(10)} }}")
    assert "depth" not in messages(at_limit)
    assert "Cannot query field" in messages(at_limit)


async def test_depth_is_counted_through_fragments(server: LiveServer) -> None:
    # Fragments A..E each add two levels; spread inside one another they reach depth 11.
    query = """
      query Deep { me { ...A } }
      fragment A on User { f1 { f2 { ...B } } }
      fragment B on User { f3 { f4 { ...C } } }
      fragment C on User { f5 { f6 { ...D } } }
      fragment D on User { f7 { f8 { ... on User { f9 { f10 { id } } } } } }
    """
    result = await server.execute(query)
    assert result.code == "BAD_USER_INPUT"
    assert "'Deep' exceeds maximum operation depth of 10" in result.errors[0]["message"]


async def test_too_deep_mutation_runs_no_resolver(server: LiveServer) -> None:
    query = register_with("user { ...Deep } accessToken") + (
        " fragment Deep on User { a { b { c { d { e { f { g { h { i { j { id } } } } } } } } } } }"
    )
    result = await server.execute(query)
    assert result.code == "BAD_USER_INPUT"
    assert "depth" in result.errors[0]["message"]
    assert await user_count(server) == 0


async def test_cyclic_fragments_are_a_validation_error(server: LiveServer) -> None:
    queries = [
        "query { ...A } fragment A on Query { ...B } fragment B on Query { ...A }",
        "query { ...A } fragment A on Query { me { id } ...A }",
        "query { me { ...U } } fragment U on User { id ... on User { ...U } }",
    ]
    for query in queries:
        result = await server.execute(query)
        assert result.errors, query
        assert set(result.codes) == {"BAD_USER_INPUT"}, result.errors
        assert "Cannot spread fragment" in messages(result)
        assert result.data is None


async def test_unknown_fragment_is_an_ordinary_validation_error(server: LiveServer) -> None:
    result = await server.execute("query { me { ...Nope } }")
    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["message"] == "Unknown fragment 'Nope'."
    result = await server.execute("query { ...Missing }")
    assert result.errors[0]["message"] == "Unknown fragment 'Missing'."


async def test_exponential_fragment_fan_out_is_rejected(server: LiveServer) -> None:
    # Each fragment spreads the next one twice: 2**60 copies of `me { id }` once expanded.
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(60))
    result = await server.execute(
        f"query {{ ...F0 }} {chain} fragment F60 on Query {{ me {{ id }} }}"
    )
    assert result.code == "BAD_USER_INPUT"
    assert "field selections" in result.errors[0]["message"]


# --- aliases, fields, directives, tokens ---------------------------------------------------


def aliased(count: int) -> str:
    return " ".join(f"a{i}: __typename" for i in range(count))


async def test_16_aliases_are_rejected_and_15_are_not(server: LiveServer) -> None:
    result = await server.execute(f"{{ {aliased(16)} }}")
    assert result.code == "BAD_USER_INPUT"
    assert "more than 15 aliases" in result.errors[0]["message"]
    assert result.data is None
    ok = (await server.execute(f"{{ {aliased(15)} }}")).ok()
    assert ok["a14"] == "Query"


async def test_aliases_are_counted_through_fragments(server: LiveServer) -> None:
    # 8 aliases in a fragment spread twice (once through another fragment) make 16.
    query = f"""
      query {{ ...Eight ...Again }}
      fragment Eight on Query {{ {aliased(8)} }}
      fragment Again on Query {{ ... on Query {{ ...Eight }} }}
    """
    result = await server.execute(query)
    assert result.code == "BAD_USER_INPUT"
    assert "aliases" in result.errors[0]["message"]


async def test_duplicate_fields_en_masse_get_one_rejection(server: LiveServer) -> None:
    account = await server.register()
    result = await server.execute("{ " + "me { id } " * 400 + "}", token=account.access_token)
    assert result.code == "BAD_USER_INPUT"
    assert "field selections" in result.errors[0]["message"]
    # A sane number of repeats is just merged.
    ok = await server.execute("{ " + "me { id } " * 20 + "}", token=account.access_token)
    assert ok.ok()["me"]["id"] == account.id


async def test_duplicate_directives_en_masse_get_one_rejection(server: LiveServer) -> None:
    result = await server.execute("{ __typename " + "@include(if: true) " * 120 + "}")
    assert result.code == "BAD_USER_INPUT"
    assert "directives" in result.errors[0]["message"]


async def test_more_than_2000_tokens_is_rejected_at_parse(server: LiveServer) -> None:
    result = await server.execute("{ " + "__typename " * 2001 + "}")
    assert result.code == "BAD_USER_INPUT"
    assert "more than 2000 tokens" in result.errors[0]["message"]


async def test_syntax_errors_carry_a_code(server: LiveServer) -> None:
    for query in ("{ me { id }", "mutation {", '{ user(id: "\\ud800") { id } }', "}{"):
        result = await raw.graphql(server, query)  # the gql client would refuse to send these
        assert result.code == "BAD_USER_INPUT", query
        assert result.errors[0]["message"].startswith("Syntax Error"), query


async def test_standard_introspection_fits_the_limits(server: LiveServer) -> None:
    query = get_introspection_query(
        descriptions=True,
        specified_by_url=True,
        directive_is_repeatable=True,
        schema_description=True,
        input_value_deprecation=True,
    )
    data = (await server.execute(query)).ok()
    assert data["__schema"]["queryType"]["name"] == "Query"


def cache_hits(cache: Any) -> int:
    """Hits of one of Strawberry's shared LRU caches (an ``lru_cache`` wrapper)."""
    return int(cache.cache_info().hits)


async def test_parser_and_validation_caches_hit_on_repeats(server: LiveServer) -> None:
    query = "query CacheProbe { __typename }"
    await server.execute(query)
    parse_hits = cache_hits(_get_parse_cache(512))
    validate_hits = cache_hits(_get_validate_cache(512))
    await server.execute(query)
    assert cache_hits(_get_parse_cache(512)) > parse_hits
    assert cache_hits(_get_validate_cache(512)) > validate_hits


# --- no suggestions ------------------------------------------------------------------------


async def test_no_did_you_mean_anywhere(server: LiveServer) -> None:
    account = await server.register()
    update = 'mutation($i: UpdateUserInput!) { updateUser(id: "x", input: $i) { id } }'
    cases: list[tuple[str, dict[str, Any] | None, str]] = [
        ("{ mee { id } }", None, "'me'"),
        ("{ me { emial } }", None, "'email'"),
        ('{ user(idd: "x") { id } }', None, "'id'"),
        ('mutation { updateUser(id: "x", input: {role: ADMN}) { id } }', None, "'ADMIN'"),
        ('mutation { updateUser(id: "x", input: {displayNme: "n"}) { id } }', None, "displayName"),
        (update, {"i": {"role": "ADMN"}}, "'ADMIN'"),
        (update, {"i": {"displayNme": "n"}}, "displayName"),
        ("query { me { ...F } } fragment F on Usr { id }", None, "'User'"),
        ("query($r: Rol) { me { id } }", None, "'Role'"),
        ("query { me { ... on Usre { id } } }", None, "'User'"),
    ]
    for query, variables, suggestion in cases:
        result = await server.execute(query, variables, token=account.access_token)
        assert result.errors, query
        text_ = messages(result)
        assert "Did you mean" not in text_, text_
        assert suggestion not in text_, text_
        assert set(result.codes) == {"BAD_USER_INPUT"}, (query, result.errors)


# --- introspection -------------------------------------------------------------------------


async def test_introspection_off_by_setting(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, introspection=False)
    async with running_server(settings) as server:
        for query in (
            "{ __schema { types { name } } }",
            '{ __type(name: "User") { name fields { name } } }',
            "query { ...I } fragment I on Query { __schema { queryType { name } } }",
        ):
            result = await server.execute(query)
            assert result.errors, query
            assert set(result.codes) == {"BAD_USER_INPUT"}, query
            assert "introspection has been disabled" in messages(result)
            assert result.data is None
        assert (await server.execute("{ __typename }")).ok() == {"__typename": "Query"}
        async with server.http_client() as client:
            page = await client.get(server.graphql_url, headers={"accept": "text/html"})
        assert page.status_code == 404


async def test_introspection_and_graphiql_on_in_development(server: LiveServer) -> None:
    data = (await server.execute("{ __schema { queryType { name } } }")).ok()
    assert data["__schema"]["queryType"]["name"] == "Query"
    async with server.http_client() as client:
        page = await client.get(server.graphql_url, headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "graphiql" in page.text.lower()


# --- masking of unexpected errors ----------------------------------------------------------


async def test_unexpected_errors_are_masked_with_a_request_id(
    server: LiveServer, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    account = await server.register()
    async with database_unreachable(database_url) as name, server.http_client() as client:
        with caplog.at_level(logging.ERROR, logger="ragstream.errors"):
            response = await client.post(
                server.graphql_url,
                json={"query": "{ me { id email } }"},
                headers={"authorization": f"Bearer {account.access_token}"},
            )
        health = await client.get(f"{server.http_url}/healthz")
        ready = await client.get(f"{server.http_url}/readyz")

    assert response.status_code == 200
    body = response.json()
    [error] = body["errors"]
    assert error["message"] == "Internal server error"
    assert error["extensions"]["code"] == "INTERNAL_SERVER_ERROR"
    request_id = error["extensions"]["requestId"]
    assert request_id == response.headers["x-request-id"]
    for leak in ("asyncpg", "sqlalchemy", "Traceback", "connection", "postgres", name):
        assert leak.lower() not in response.text.lower(), leak
    # The full story is in the log, under the same request id.
    assert any(request_id in r.getMessage() and r.exc_info for r in caplog.records)

    assert health.status_code == 200
    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable"}


async def test_health_and_readiness(server: LiveServer) -> None:
    async with server.http_client() as client:
        health = await client.get(f"{server.http_url}/healthz")
        ready = await client.get(f"{server.http_url}/readyz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


async def test_service_recovers_when_the_database_comes_back(
    server: LiveServer, database_url: str
) -> None:
    account = await server.register()
    await end_connections(database_url)
    # Pooled connections were killed; the first read fails, is invalidated and retried once.
    result = await raw.graphql(server, "{ me { id } }", token=account.access_token)
    assert result.ok()["me"]["id"] == account.id
    assert uuid.UUID(result.ok()["me"]["id"])


@asynccontextmanager
async def users_table_locked(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """Hold an exclusive lock on the users table from outside the server, in an open transaction."""
    name, admin_uri = database_of(database_url)
    conn = await asyncpg.connect(admin_uri.replace("/postgres?", f"/{name}?"))
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            yield conn
    finally:
        await conn.close()


async def wait_for_lock_waiter(conn: asyncpg.Connection) -> None:
    """Until a server connection is blocked on the lock (bounded, so a bug cannot hang the run)."""
    for _ in range(600):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no request ever waited on the lock")


async def test_a_statement_timeout_is_a_masked_error(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, db_statement_timeout_ms=300)
    async with running_server(settings) as server:
        account = await server.register()
        async with users_table_locked(database_url):
            result = await raw.graphql(server, "{ me { id } }", token=account.access_token)
        assert result.code == "INTERNAL_SERVER_ERROR"
        assert result.errors[0]["message"] == "Internal server error"
        assert "timeout" not in json.dumps(result.errors).lower()
        # Nothing is stuck afterwards.
        assert (await server.execute("{ me { id } }", token=account.access_token)).ok()


async def test_pool_exhaustion_is_a_clean_server_busy_error(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(
        database_url, tmp_path, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.3
    )
    async with running_server(settings) as server:
        account = await server.register()
        async with users_table_locked(database_url) as lock:
            # The first request holds the only connection, waiting on the lock ...
            blocked = asyncio.create_task(
                raw.graphql(server, "{ me { id } }", token=account.access_token)
            )
            await wait_for_lock_waiter(lock)
            # ... so the next one cannot get a connection and fails cleanly, as retryable.
            starved = await raw.graphql(server, "{ me { id } }", token=account.access_token)
            assert starved.code == "RATE_LIMITED"
            assert starved.errors[0]["message"] == "the server is busy; try again in a moment"
            assert starved.errors[0]["extensions"]["reason"] == "SERVER_BUSY"
            assert "pool" not in json.dumps(starved.errors).lower()
            async with server.http_client() as client:
                assert (await client.get(f"{server.http_url}/readyz")).status_code == 503
        # Once the lock is gone the waiting request completes normally.
        assert (await blocked).ok()["me"]["id"] == account.id


def test_a_document_is_measured_once_and_only_its_own_result_is_reused() -> None:
    measured: list[str] = []

    def measure(document: DocumentNode) -> str:
        measured.append(print_ast(document))
        return print_ast(document)

    cache: PerDocument[str] = PerDocument(2)
    first, same_text, other = parse("{ me { id } }"), parse("{ me { id } }"), parse("{ a }")

    assert cache.get(first, measure) == "{\n  me {\n    id\n  }\n}"
    assert cache.get(first, measure) == "{\n  me {\n    id\n  }\n}"
    assert len(measured) == 1
    # Another parse of the same text is another document: measured on its own.
    cache.get(same_text, measure)
    assert len(measured) == 2
    # Past the size the oldest goes, and is measured again when it comes back.
    cache.get(other, measure)
    cache.get(first, measure)
    assert len(measured) == 4
