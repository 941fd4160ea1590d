"""OpenTelemetry spans, exported in memory: requests continue the caller's trace, and each
operation, SQL statement, provider call, retrieval and ingestion job has its span."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ragstream.app import create_app
from tests.chat_support import chat_all, new_conversation
from tests.conftest import TEST_JWT_SECRET, make_settings
from tests.documents_support import ingest_text
from tests.support import LiveServer

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


@pytest.fixture
async def traced(
    database_url: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> AsyncIterator[LiveServer]:
    server = LiveServer(create_app(make_settings(database_url, tmp_path), span_exporter=exporter))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def named(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


async def test_a_request_continues_the_callers_trace(
    traced: LiveServer, exporter: InMemorySpanExporter
) -> None:
    account = await traced.register()
    exporter.clear()
    async with traced.http_client() as client:
        response = await client.post(
            "/graphql",
            json={"query": "query Me { me { id } }"},
            headers={
                "authorization": f"Bearer {account.access_token}",
                "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
            },
        )
    assert response.json()["data"]["me"]["id"] == account.id

    spans = exporter.get_finished_spans()
    [request] = named(spans, "POST /graphql")
    [operation] = named(spans, "graphql.query Me")
    statements = named(spans, "db.query")
    assert f"{request.context.trace_id:032x}" == TRACE_ID
    assert request.parent is not None
    assert f"{request.parent.span_id:016x}" == PARENT_ID
    assert operation.parent is not None
    assert operation.parent.span_id == request.context.span_id
    assert operation.attributes is not None
    assert operation.attributes["graphql.operation.type"] == "query"
    assert statements
    assert all(s.context.trace_id == request.context.trace_id for s in statements)
    assert any(
        s.parent is not None and s.parent.span_id == operation.context.span_id for s in statements
    )
    # Statement text only: the bound values (the user's id) never reach a span.
    assert all(account.id not in str(s.attributes) for s in statements)


async def test_chat_and_ingestion_have_their_spans(
    traced: LiveServer, exporter: InMemorySpanExporter
) -> None:
    account = await traced.register()
    await ingest_text(traced, account.access_token, "Valves regulate the flow of water. " * 10)
    conversation = await new_conversation(traced, account.access_token)
    events = await chat_all(traced, account.access_token, conversation, "What do valves do?")
    assert events[-1]["__typename"] == "GenerationCompleted"

    spans = exporter.get_finished_spans()
    [job] = named(spans, "ingestion.job")
    steps = [
        one
        for name in ("ingestion.read", "ingestion.embed", "ingestion.store")
        for one in named(spans, name)
    ]
    assert len(steps) == 3
    assert all(s.parent is not None and s.parent.span_id == job.context.span_id for s in steps)
    read, embed, store = steps
    # One after the other: each step starts once the one before has ended.
    assert (read.end_time or 0) <= (embed.start_time or 0)
    assert (embed.end_time or 0) <= (store.start_time or 0)
    assert store.end_time is not None
    assert (store.attributes or {}).get("ingestion.chunks") == (embed.attributes or {}).get(
        "ingestion.chunks"
    )
    embeddings = named(spans, "embeddings")
    assert any(
        s.parent is not None and s.parent.span_id == embed.context.span_id for s in embeddings
    )
    assert any(
        s.parent is not None and s.parent.span_id == store.context.span_id
        for s in named(spans, "db.query")
    )
    [chat] = named(spans, "llm.chat")
    assert chat.attributes is not None
    assert (chat.attributes["llm.provider"], chat.attributes["llm.model"]) == (
        "extractive",
        "extractive",
    )
    assert isinstance(chat.attributes["llm.chunks"], int)
    assert chat.attributes["llm.chunks"] > 0
    kinds = sorted(
        str((s.attributes or {}).get("retrieval.kind")) for s in named(spans, "retrieval")
    )
    assert kinds == ["chat"]
    [subscription] = named(spans, "graphql.subscription")
    assert chat.context.trace_id == subscription.context.trace_id


def test_nothing_of_opentelemetry_is_imported_when_tracing_is_off(tmp_path: Path) -> None:
    program = f"""
import sys
from ragstream.app import create_app
from ragstream.settings import Settings
create_app(Settings(jwt_secret={TEST_JWT_SECRET!r}, data_dir={str(tmp_path)!r}, metrics=True))
assert not [m for m in sys.modules if m.startswith("opentelemetry")], "imported"
"""
    subprocess.run([sys.executable, "-c", program], check=True)  # noqa: S603
