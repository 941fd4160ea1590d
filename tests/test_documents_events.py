"""documentEvents over a real graphql-transport-ws websocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from ragstream.documents_worker import ingestion_deps
from ragstream.domain.documents.jobs import running_worker
from ragstream.settings import Settings
from tests.documents_support import create, ingest_text, upload
from tests.processes import stop_process
from tests.support import Account, LiveServer, running_server

EVENTS = """subscription($id: ID!) {
  documentEvents(id: $id) { id status error chunkCount }
}"""


async def collect_events(server: LiveServer, token: str, document_id: str) -> list[dict[str, Any]]:
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

        watcher = asyncio.create_task(collect_events(server, account.access_token, document_id))
        await subscribed(server, document_id)
        assert server.state.database_url is not None
        async with running_worker(
            settings, server.state.database_url, ingestion_deps(server.state)
        ):
            async with asyncio.timeout(60):
                events = await watcher

    assert [e["status"] for e in events] == ["PENDING", "PROCESSING", "READY"]
    assert events[-1]["chunkCount"] == 1
    assert {e["id"] for e in events} == {document_id}


@contextlib.asynccontextmanager
async def watched_elsewhere(
    settings: Settings,
) -> AsyncIterator[tuple[Account, asyncio.Task[list[dict[str, Any]]]]]:
    """A document created on a server that runs no jobs and does not poll its documents while
    the block runs, with a `documentEvents` subscriber (the task): every status after PENDING
    must reach it from another process, through the broker."""
    quiet = settings.model_copy(
        update={"ingestion_worker": False, "document_events_poll_seconds": 3600.0}
    )
    async with running_server(quiet) as server:
        account = await server.register()
        created = (await create(server, account.access_token, "Ingested elsewhere.")).ok()
        document_id = created["createDocument"]["id"]
        watcher = asyncio.create_task(collect_events(server, account.access_token, document_id))
        await subscribed(server, document_id)
        yield account, watcher


async def ingested_elsewhere(watcher: asyncio.Task[list[dict[str, Any]]]) -> None:
    """The subscriber of `watched_elsewhere` saw the document become READY, step by step."""
    async with asyncio.timeout(60):
        events = await watcher
    assert [e["status"] for e in events] == ["PENDING", "PROCESSING", "READY"]
    assert events[-1]["chunkCount"] == 1


async def test_a_worker_process_sends_its_events_to_the_servers_subscribers(
    settings: Settings, tmp_path: Path
) -> None:
    async with watched_elsewhere(settings) as (_, watcher):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RAGSTREAM_")},
            "RAGSTREAM_DATABASE_URL": str(settings.database_url),
            "RAGSTREAM_DATA_DIR": str(tmp_path / "worker"),
            "RAGSTREAM_EMBEDDING_PROVIDER": str(settings.embedding_provider),
            "RAGSTREAM_EMBEDDING_DIMENSIONS": str(settings.embedding_dimensions),
        }
        worker = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "ragstream.cli", "worker"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await ingested_elsewhere(watcher)
        finally:
            await stop_process(worker, 60)


async def subscribed(server: LiveServer, document_id: str) -> None:
    topic = f"document:{document_id}"
    async with asyncio.timeout(30):
        while True:
            if server.state.broker.subscriber_count(topic):  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)


async def test_late_subscriber_gets_the_final_state_and_completes(server: LiveServer) -> None:
    account = await server.register()
    document = await ingest_text(server, account.access_token, "Already done.")

    async with asyncio.timeout(30):
        events = await collect_events(server, account.access_token, document["id"])

    assert [e["status"] for e in events] == ["READY"]


async def test_failed_ingestion_ends_the_stream(server: LiveServer) -> None:
    account = await server.register()
    _, result = await upload(server, account.access_token, "broken.pdf", b"%PDF-1.7 nonsense")
    document_id = result.ok()["uploadDocument"]["id"]

    async with asyncio.timeout(30):
        events = await collect_events(server, account.access_token, document_id)

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
            await collect_events(server, token, document_id)
        assert raised.value.errors is not None
        assert raised.value.errors[0]["extensions"]["code"] == "NOT_FOUND"

    assert [
        e["status"] for e in await collect_events(server, admin.access_token, private["id"])
    ] == ["READY"]


async def test_events_need_a_signed_in_socket(server: LiveServer) -> None:
    owner = await server.register()
    document = await ingest_text(server, owner.access_token, "Anonymous watchers refused.")
    with pytest.raises(TransportQueryError) as raised:
        await collect_events(server, None, document["id"])  # type: ignore[arg-type]
    assert raised.value.errors is not None
    assert raised.value.errors[0]["extensions"]["code"] == "UNAUTHENTICATED"
