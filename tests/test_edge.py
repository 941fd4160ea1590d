"""Malformed HTTP requests: each answers JSON with a status, `extensions.code` and an X-Request-ID,
and nothing reaches a resolver or the database."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import jwt
import pytest
from starlette.types import Receive, Scope, Send

from ragstream.edge import UnexpectedErrorMiddleware, decode_json
from ragstream.observability.logs import RequestLogMiddleware
from tests import raw
from tests.conftest import TEST_JWT_SECRET
from tests.evaluations_support import CREATE, db_count
from tests.support import LiveServer

ME = "{ me { id } }"


def assert_json_refusal(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert len(response.headers["x-request-id"]) == 32
    assert [e["extensions"]["code"] for e in response.json()["errors"]] == [code]


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "body",
    [
        b'{"query": "{ __typename }", "variables": {"x": "\xff\xfe"}}',  # not UTF-8
        b"42",
        b"null",
        b'"x"',
        b"true",
        b"{not json",
        b"",
        b'{"query": "{ __typename }", "variables": {"v": ' + nested(100_000).encode() + b"}}",
        b'{"query": "{ __typename }", "variables": {"v": ' + nested(31).encode() + b"}}",
    ],
    ids=[
        "bad-utf8",
        "number",
        "null",
        "string",
        "true",
        "syntax",
        "empty",
        "nested-100000",
        "nested-33-levels",
    ],
)
async def test_malformed_post_bodies_answer_json_400(server: LiveServer, body: bytes) -> None:
    assert_json_refusal(await raw.post(server, body), 400, "BAD_USER_INPUT")


@pytest.mark.parametrize(
    "number", [18446744073709551616, -9223372036854775809, 9223372036854775807, 10**40]
)
def test_integers_of_any_size_are_read_exactly(number: int) -> None:
    for body in (f'{{"v": {number}}}', f'{{"v": {number}}}'.encode()):
        value = decode_json(body, max_depth=32)
        assert value == {"v": number}
        assert isinstance(value, dict)
        assert type(value["v"]) is int
    # Deep inside, beside a float and text with long digit runs of its own.
    text = f'{{"a": [{{"b": [1.5, {number}]}}], "s": "{"7" * 40}"}}'
    nested_value = decode_json(text.encode(), max_depth=32)
    assert nested_value == {"a": [{"b": [1.5, number]}], "s": "7" * 40}
    assert isinstance(nested_value, dict)
    assert type(nested_value["a"][0]["b"][1]) is int


async def test_nesting_at_the_limit_is_accepted(server: LiveServer) -> None:
    # 32 levels: the body, its variables and 30 arrays.
    body = json.dumps({"query": "{ __typename }", "variables": {"v": json.loads(nested(30))}})
    response = await raw.post(server, body)
    assert response.status_code == 200
    assert response.json() == {"data": {"__typename": "Query"}}


async def test_deeply_nested_get_variables_answer_json_400(server: LiveServer) -> None:
    async with server.http_client() as client:
        response = await client.get(
            "/graphql",
            params={"query": "{ __typename }", "variables": '{"v": ' + nested(3_000) + "}"},
        )
    assert_json_refusal(response, 400, "BAD_USER_INPUT")


async def test_scalar_get_variables_answer_json_400(server: LiveServer) -> None:
    async with server.http_client() as client:
        response = await client.get(
            "/graphql", params={"query": "{ __typename }", "variables": "42"}
        )
    assert_json_refusal(response, 400, "BAD_USER_INPUT")


async def test_transport_refusals_answer_json(server: LiveServer) -> None:
    async with server.http_client() as client:
        wrong_type = await client.post(
            "/graphql", content="{}", headers={"content-type": "application/xml"}
        )
        no_query = await client.post("/graphql", json={"variables": {}})
    assert_json_refusal(wrong_type, 400, "BAD_USER_INPUT")
    assert_json_refusal(no_query, 400, "BAD_USER_INPUT")


@pytest.mark.parametrize("bad", ["a\x00b", "\ud800x", "x\udfff"], ids=["nul", "lead", "trail"])
async def test_unstorable_text_in_variables_is_refused_before_the_database(
    server: LiveServer, bad: str
) -> None:
    account = await server.register()
    before = await db_count(server)
    created = await raw.graphql(
        server, CREATE, {"input": {"title": bad, "companyName": "ACME"}}, token=account.access_token
    )
    nested_input = await raw.graphql(
        server,
        CREATE,
        {"input": {"title": "ok", "companyName": "ACME", "criteria": [{"name": bad}]}},
        token=account.access_token,
    )
    listed = await raw.graphql(
        server,
        "query($f: EvaluationFilter) { evaluations(filter: $f) { totalCount } }",
        {"f": {"search": bad}},
        token=account.access_token,
    )
    searched = await raw.graphql(
        server,
        "query($q: String!) { search(query: $q) { score } }",
        {"q": bad},
        token=account.access_token,
    )
    for result, field in (
        (created, "title"),
        (nested_input, "name"),
        (listed, "search"),
        (searched, "q"),
    ):
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == field
        assert result.data is None
    assert await db_count(server) == before


async def test_nul_in_a_literal_argument_is_refused(server: LiveServer) -> None:
    account = await server.register()
    before = await db_count(server)
    escaped = await raw.graphql(
        server,
        'mutation { createEvaluation(input: {title: "a\\u0000b", companyName: "c"}) { id } }',
        token=account.access_token,
    )
    verbatim = await raw.graphql(
        server, '{ search(query: "a\x00b") { score } }', token=account.access_token
    )
    assert escaped.code == verbatim.code == "BAD_USER_INPUT"
    assert escaped.errors[0]["extensions"]["field"] == "title"
    assert verbatim.errors[0]["extensions"]["field"] == "query"
    assert await db_count(server) == before


async def test_a_token_with_an_out_of_range_expiry_is_unauthenticated(server: LiveServer) -> None:
    account = await server.register()
    now = int(datetime.now(UTC).timestamp())
    for exp in (2**63, 2**53, 10**20):
        claims = {"sub": account.id, "sid": str(uuid.uuid4()), "typ": "access", "iat": now}
        token = jwt.encode({**claims, "exp": exp}, TEST_JWT_SECRET, algorithm="HS256")
        result = await raw.graphql(server, ME, token=token)
        assert result.code == "UNAUTHENTICATED", exp


async def test_an_unexpected_failure_answers_masked_json_with_the_request_id() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("secret detail")

    app = RequestLogMiddleware(UnexpectedErrorMiddleware(broken), log_requests=False)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/", headers={"x-request-id": "probe-request-1"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "probe-request-1"
    error = response.json()["errors"][0]
    assert error == {
        "message": "Internal server error",
        "extensions": {"code": "INTERNAL_SERVER_ERROR", "requestId": "probe-request-1"},
    }
    assert "secret detail" not in response.text
