"""Trusted documents: Automatic Persisted Queries over HTTP GET, POST and websockets, the
registered manifest with `only`, and Cache-Control for GET queries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from ragstream.app import build_state
from ragstream.cli import main
from ragstream.persisted import document_hash
from ragstream.settings import ConfigurationError
from tests.conftest import make_settings
from tests.support import LiveServer, running_server
from tests.test_websockets import init, raw_socket, receive, send, sign_in

TYPENAME = "query Typename { __typename }"
ME = "query Me { me { id } }"
CREATE = 'mutation { createEvaluation(input: {title: "T", companyName: "C"}) { id } }'


def persisted(document: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": document_hash(document)}}


async def post(
    server: LiveServer, body: dict[str, Any], token: str | None = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    async with server.http_client() as client:
        return await client.post("/graphql", json=body, headers=headers)


async def get(
    server: LiveServer, params: dict[str, Any], token: str | None = None
) -> httpx.Response:
    headers = {"accept": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    query = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in params.items()}
    async with server.http_client() as client:
        return await client.get("/graphql", params=query, headers=headers)


def only_error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body.get("data") is None
    [error] = body["errors"]
    return dict(error)


async def count_evaluations(server: LiveServer) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM evaluations")) or 0)


async def test_apq_miss_register_and_hit_over_post_and_get(server: LiveServer) -> None:
    miss = only_error(await post(server, {"extensions": persisted(TYPENAME)}))
    assert miss == {
        "message": "PersistedQueryNotFound",
        "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
    }

    registered = await post(server, {"query": TYPENAME, "extensions": persisted(TYPENAME)})
    assert registered.json() == {"data": {"__typename": "Query"}}

    hit = await post(server, {"extensions": persisted(TYPENAME)})
    assert hit.json() == {"data": {"__typename": "Query"}}
    by_get = await get(server, {"extensions": persisted(TYPENAME)})
    assert by_get.json() == {"data": {"__typename": "Query"}}


async def test_a_hash_that_is_not_the_documents_is_refused(server: LiveServer) -> None:
    wrong = only_error(await post(server, {"query": TYPENAME, "extensions": persisted(ME)}))
    assert wrong["extensions"]["code"] == "BAD_USER_INPUT"
    # Nothing was registered under the hash it claimed.
    assert only_error(await post(server, {"extensions": persisted(ME)}))["extensions"] == {
        "code": "PERSISTED_QUERY_NOT_FOUND"
    }


async def test_apq_over_websockets(server: LiveServer) -> None:
    account = await server.register()
    await post(server, {"query": TYPENAME, "extensions": persisted(TYPENAME)})
    await server.listen()
    async with raw_socket(server) as ws:
        await sign_in(ws, account)
        await send(ws, {"id": "a", "type": "subscribe", "payload": {"extensions": persisted(ME)}})
        miss = await receive(ws)
        await send(
            ws,
            {"id": "b", "type": "subscribe", "payload": {"query": ME, "extensions": persisted(ME)}},
        )
        registered = await receive(ws)
        assert (await receive(ws))["type"] == "complete"
        await send(ws, {"id": "c", "type": "subscribe", "payload": {"extensions": persisted(ME)}})
        hit = await receive(ws)
        assert (await receive(ws))["type"] == "complete"
        # Registered over HTTP, found over the socket: one store per server.
        await send(
            ws, {"id": "d", "type": "subscribe", "payload": {"extensions": persisted(TYPENAME)}}
        )
        from_http = await receive(ws)

    assert (miss["type"], miss["payload"]) == (
        "error",
        [
            {
                "message": "PersistedQueryNotFound",
                "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"},
            }
        ],
    )
    assert registered["payload"]["data"] == {"me": {"id": account.id}}
    assert hit["payload"]["data"] == {"me": {"id": account.id}}
    assert from_http["payload"]["data"] == {"__typename": "Query"}


async def test_cache_control_of_get_queries(server: LiveServer) -> None:
    account = await server.register()
    public = await get(server, {"query": TYPENAME})
    viewer = await get(server, {"query": ME}, token=account.access_token)
    failed = await get(server, {"query": ME})
    posted = await post(server, {"query": TYPENAME})

    assert public.headers["cache-control"] == "public, max-age=60"
    assert "Authorization" in public.headers["vary"]
    assert viewer.json()["data"]["me"]["id"] == account.id
    assert viewer.headers["cache-control"] == "private, no-store"
    assert only_error(failed)["extensions"]["code"] == "UNAUTHENTICATED"
    assert failed.headers["cache-control"] == "no-store"
    assert "cache-control" not in posted.headers


def write_manifest(path: Path, *documents: str) -> Path:
    operations = [
        {"id": document_hash(d), "body": d, "name": "", "type": "query"} for d in documents
    ]
    path.write_text(
        json.dumps(
            {"format": "apollo-persisted-query-manifest", "version": 1, "operations": operations}
        )
    )
    return path


async def test_only_mode_runs_registered_documents_only(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(data_dir))
    assert main(["persist-queries", str(write_manifest(tmp_path / "m.json", TYPENAME, ME))]) == 0
    assert (data_dir / "persisted-queries.json").exists()

    settings = make_settings(database_url, data_dir, persisted_queries="only")
    async with running_server(settings) as server:
        by_hash = await post(server, {"extensions": persisted(TYPENAME)})
        by_text = await post(server, {"query": TYPENAME})
        other = await post(server, {"query": "query Other { __typename }"})
        unknown_hash = await post(server, {"extensions": persisted("query Other { __typename }")})
        mutation = await post(server, {"query": CREATE})
        evaluations = await count_evaluations(server)
        await server.listen()
        async with raw_socket(server) as ws:
            await init(ws)
            await send(ws, {"id": "1", "type": "subscribe", "payload": {"query": CREATE}})
            refused = await receive(ws)
            await send(
                ws, {"id": "2", "type": "subscribe", "payload": {"extensions": persisted(TYPENAME)}}
            )
            allowed = await receive(ws)

    assert by_hash.json() == by_text.json() == {"data": {"__typename": "Query"}}
    for response in (other, mutation):
        assert only_error(response) == {
            "message": "only registered operations run on this server",
            "extensions": {"code": "FORBIDDEN"},
        }
    assert only_error(unknown_hash)["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    assert evaluations == 0  # the refused mutation changed nothing
    assert refused["type"] == "error"
    assert refused["payload"][0]["extensions"] == {"code": "FORBIDDEN"}
    assert allowed["payload"]["data"] == {"__typename": "Query"}


async def test_off_mode_refuses_the_extension(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, persisted_queries="off")
    async with running_server(settings) as server:
        refused = only_error(
            await post(server, {"query": TYPENAME, "extensions": persisted(TYPENAME)})
        )
        plain = await post(server, {"query": TYPENAME})
    assert refused["extensions"]["code"] == "PERSISTED_QUERY_NOT_SUPPORTED"
    assert plain.json() == {"data": {"__typename": "Query"}}


def test_persist_queries_refuses_a_bad_manifest_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(tmp_path / "data"))
    invalid = write_manifest(tmp_path / "invalid.json", "query { nope }")
    mismatched = tmp_path / "mismatched.json"
    mismatched.write_text(json.dumps({document_hash(ME): TYPENAME}))

    assert main(["persist-queries", str(invalid)]) == 1
    assert "is not valid here" in capsys.readouterr().err
    assert main(["persist-queries", str(mismatched)]) == 1
    assert "is not the SHA-256 of its document" in capsys.readouterr().err
    assert not (tmp_path / "data" / "persisted-queries.json").exists()


def test_only_mode_without_a_manifest_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="persist-queries"):
        build_state(make_settings(database_url, tmp_path, persisted_queries="only"))
