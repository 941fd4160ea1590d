"""GraphQL over HTTP: body limits, batching, methods, content types, CSRF, request ids, CORS."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests import raw
from tests.conftest import make_settings
from tests.support import LiveServer, running_server

ALLOWED_ORIGIN = "https://app.example"


@pytest.fixture
async def small_server(database_url: str, tmp_path: Path) -> AsyncIterator[LiveServer]:
    settings = make_settings(
        database_url, tmp_path, max_body_bytes=2_000, cors_origins=[ALLOWED_ORIGIN]
    )
    async with running_server(settings, listen=True) as server:
        yield server


@pytest.fixture
def server(live_server: LiveServer) -> LiveServer:
    """Everything here is about HTTP itself, so every request crosses a real socket."""
    return live_server


def padded_query(size: int) -> bytes:
    body = json.dumps({"query": "{ __typename }", "variables": {"pad": "x" * size}})
    return body.encode()


async def test_body_over_the_limit_is_413(small_server: LiveServer) -> None:
    response = await raw.post(small_server, padded_query(3_000))
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    ok = await raw.post(small_server, padded_query(1_000))
    assert ok.status_code == 200
    assert ok.json() == {"data": {"__typename": "Query"}}


async def test_streamed_body_over_the_limit_is_413(small_server: LiveServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No content-length: the limit must hold for what actually arrives.
        body = padded_query(10_000)
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    async with small_server.http_client() as client:
        response = await client.post(
            small_server.graphql_url,
            content=chunks(),
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 413


async def test_json_array_batches_are_refused(server: LiveServer) -> None:
    batch = json.dumps([{"query": "{ __typename }"}, {"query": "{ __typename }"}])
    response = await raw.post(server, batch)
    assert response.status_code == 400
    assert "data" not in response.text


async def test_queries_over_get_work_but_mutations_do_not(server: LiveServer) -> None:
    async with server.http_client() as client:
        query = await client.get(server.graphql_url, params={"query": "{ __typename }"})
        mutation = await client.get(
            server.graphql_url,
            params={"query": 'mutation { logout(refreshToken: "x") }'},
        )
    assert query.status_code == 200
    assert query.json() == {"data": {"__typename": "Query"}}
    assert mutation.status_code in (400, 405)
    assert "data" not in mutation.text


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", '{"query": "{ __typename }"}'),
        ("application/x-www-form-urlencoded", "query=%7B__typename%7D"),
        ("text/plain;charset=UTF-8", '{"query": "mutation { logout(refreshToken: \\"x\\") }"}'),
    ],
)
async def test_simple_cross_site_content_types_are_refused(
    server: LiveServer, content_type: str, body: str
) -> None:
    response = await raw.post(server, body, {"content-type": content_type})
    assert response.status_code in (400, 415)
    assert "data" not in response.text


def multipart_body() -> tuple[bytes, str]:
    boundary = "ragstream-test-boundary"
    operations = json.dumps({"query": "{ __typename }", "variables": {}})
    disposition = "Content-Disposition: form-data; name="
    parts = [
        f'--{boundary}\r\n{disposition}"operations"\r\n\r\n{operations}\r\n',
        f'--{boundary}\r\n{disposition}"map"\r\n\r\n{{}}\r\n',
        f"--{boundary}--\r\n",
    ]
    return "".join(parts).encode(), f"multipart/form-data; boundary={boundary}"


async def test_multipart_without_a_preflight_header_is_refused(server: LiveServer) -> None:
    body, content_type = multipart_body()
    refused = await raw.post(server, body, {"content-type": content_type})
    assert refused.status_code == 400
    assert "Apollo-Require-Preflight" in refused.text

    for header in ("apollo-require-preflight", "x-requested-with"):
        accepted = await raw.post(server, body, {"content-type": content_type, header: "1"})
        assert accepted.status_code == 200, accepted.text
        assert accepted.json() == {"data": {"__typename": "Query"}}


async def test_other_methods_are_refused(server: LiveServer) -> None:
    async with server.http_client() as client:
        response = await client.put(server.graphql_url, json={"query": "{ __typename }"})
    assert response.status_code == 405


async def test_malformed_json_is_a_clean_400(server: LiveServer) -> None:
    for body in ("{not json", '{"query": 1}', '{"query": "{ __typename }", "variables": []}', ""):
        response = await raw.post(server, body)
        assert response.status_code == 400, body
        assert "Traceback" not in response.text


async def test_request_ids_are_echoed_or_assigned(server: LiveServer) -> None:
    async with server.http_client() as client:
        assigned = await client.get(f"{server.http_url}/healthz")
        kept = await client.get(
            f"{server.http_url}/healthz", headers={"x-request-id": "client-chosen-id-123"}
        )
        replaced = await client.get(
            f"{server.http_url}/healthz", headers={"x-request-id": "bad id with spaces <script>"}
        )
    assert len(assigned.headers["x-request-id"]) == 32
    assert kept.headers["x-request-id"] == "client-chosen-id-123"
    assert replaced.headers["x-request-id"] != "bad id with spaces <script>"
    assert len(replaced.headers["x-request-id"]) == 32


async def test_cors_allows_only_the_configured_origins(small_server: LiveServer) -> None:
    preflight = {
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    async with small_server.http_client() as client:
        allowed = await client.options(
            small_server.graphql_url, headers={"origin": ALLOWED_ORIGIN, **preflight}
        )
        refused = await client.options(
            small_server.graphql_url, headers={"origin": "https://evil.example", **preflight}
        )
        simple = await client.post(
            small_server.graphql_url,
            json={"query": "{ __typename }"},
            headers={"origin": "https://evil.example"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-allow-origin" not in simple.headers
