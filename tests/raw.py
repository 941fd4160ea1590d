"""Plain-HTTP helpers for cases the gql client cannot send (odd bodies, headers, encodings)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from tests.support import LiveServer, Result


async def post(
    server: LiveServer,
    content: str | bytes,
    headers: dict[str, str] | None = None,
    *,
    client_address: str | None = None,
) -> httpx.Response:
    """POST to the endpoint; ``client_address`` (a loopback address such as 127.0.0.2) is the
    address the server sees the request come from."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    async with server.http_client(client_address=client_address) as client:
        return await client.post("/graphql", content=content, headers=all_headers)


async def graphql(
    server: LiveServer,
    query: str,
    variables: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    client_address: str | None = None,
) -> Result:
    """One operation as JSON with ASCII escapes (so lone surrogates survive the trip)."""
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["authorization"] = f"Bearer {token}"
    body = json.dumps({"query": query, "variables": variables or {}})
    response = await post(server, body, all_headers, client_address=client_address)
    assert response.status_code == 200, (response.status_code, response.text)
    payload = response.json()
    return Result(data=payload.get("data"), errors=list(payload.get("errors") or []))
