"""documentEvents over a real graphql-transport-ws websocket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from ragstream.documents_worker import ingestion_deps
from ragstream.domain.documents.jobs import running_worker
from ragstream.settings import Settings
from tests.documents_support import create, ingest_text, upload
from tests.support import LiveServer, running_server

EVENTS = """subscription($id: ID!) {
  documentEvents(id: $id) { id status error chunkCount }
}"""


async def _collect(server: LiveServer, token: str, document_id: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    async with server.websocket(token) as session:
        async for data in session.subscribe(
            GraphQLRequest(EVENTS, variable_values={"id": document_id})
        ):
            seen.append(data["documentEvents"])
    return seen


async def test_events_follow_ingestion_until_ready(settings: Settings) -> None:
    settings = settings.model_copy(update={"ingestion_worker": False})
    async with running_server(settings) as server:
        account = await server.register()
        created = (await create(server, account.access_token, "Watch me become ready.")).ok()
        document_id = created["createDocument"]["id"]

        watcher = asyncio.create_task(_collect(server, account.access_token, document_id))
        topic = f"document:{document_id}"
        async with asyncio.timeout(30):
            while True:
                if server.state.broker.subscriber_count(topic):  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
        assert server.state.database_url is not None
        async with running_worker(
            settings, server.state.database_url, ingestion_deps(server.state)
        ):
            async with asyncio.timeout(60):
                events = await watcher

    assert [e["status"] for e in events] == ["PENDING", "PROCESSING", "READY"]
    assert events[-1]["chunkCount"] == 1
    assert {e["id"] for e in events} == {document_id}


async def test_late_subscriber_gets_the_final_state_and_completes(server: LiveServer) -> None:
    account = await server.register()
    document = await ingest_text(server, account.access_token, "Already done.")

    async with asyncio.timeout(30):
        events = await _collect(server, account.access_token, document["id"])

    assert [e["status"] for e in events] == ["READY"]


async def test_failed_ingestion_ends_the_stream(server: LiveServer) -> None:
    account = await server.register()
    _, result = await upload(server, account.access_token, "broken.pdf", b"%PDF-1.7 nonsense")
    document_id = result.ok()["uploadDocument"]["id"]

    async with asyncio.timeout(30):
        events = await _collect(server, account.access_token, document_id)

    assert events[-1]["status"] == "FAILED"
    assert "PDF could not be read" in events[-1]["error"]


async def test_only_owner_or_admin_may_watch(server: LiveServer) -> None:
    admin = await server.register()
    await server.make_admin(admin)
    owner = await server.register()
    other = await server.register()
    private = await ingest_text(server, owner.access_token, "Private progress.")
    shared = await ingest_text(server, admin.access_token, "Shared progress.", visibility="SHARED")

    for token, document_id in (
        (other.access_token, private["id"]),
        (other.access_token, shared["id"]),
        (other.access_token, "not-a-uuid"),
    ):
        with pytest.raises(TransportQueryError) as raised:
            await _collect(server, token, document_id)
        assert raised.value.errors is not None
        assert raised.value.errors[0]["extensions"]["code"] == "NOT_FOUND"

    assert [e["status"] for e in await _collect(server, admin.access_token, private["id"])] == [
        "READY"
    ]


async def test_events_need_a_signed_in_socket(server: LiveServer) -> None:
    owner = await server.register()
    document = await ingest_text(server, owner.access_token, "Anonymous watchers refused.")
    with pytest.raises(TransportQueryError) as raised:
        await _collect(server, None, document["id"])  # type: ignore[arg-type]
    assert raised.value.errors is not None
    assert raised.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"
