"""The `openai` embedding provider, through a local server speaking the OpenAI protocol."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import SecretStr
from sqlalchemy import text

from ragstream.backend import Backend, connect
from ragstream.documents_worker import check_embedding_dimensions
from ragstream.domain.documents.reindex import reindex
from ragstream.domain.llm.embeddings import EmbeddingError
from ragstream.domain.llm.openai_client import openai_client
from ragstream.domain.llm.openai_embeddings import OpenAIEmbedder
from ragstream.settings import ConfigurationError, Settings
from tests.documents_support import SEARCH, ingest_text
from tests.openai_stub import EMBEDDINGS, OpenAIStub
from tests.support import running_server


def _online(settings: Settings, stub: OpenAIStub, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "embedding_provider": "openai",
        "openai_base_url": stub.base_url,
        "openai_api_key": SecretStr("test-key"),
        "embedding_model": "text-embedding-3-small",
        "openai_max_retries": 0,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


async def test_ingestion_and_search_use_the_provider(settings: Settings) -> None:
    async with OpenAIStub() as stub:
        online = _online(settings, stub, embedding_batch_size=2)
        async with running_server(online) as server:
            account = await server.register()
            body = "\n\n".join(f"# Topic {i}\n\nFacts about subject {i}." for i in range(5))
            document = await ingest_text(
                server, account.access_token, body, mime_type="text/markdown"
            )
            hits = (
                await server.execute(SEARCH, {"q": "subject 3"}, token=account.access_token)
            ).ok()["search"]
            async with server.state.sessionmaker() as session:
                stored = (
                    await session.execute(
                        text(
                            "SELECT embedding::real[] FROM chunks"
                            " WHERE document_id = :id ORDER BY ordinal"
                        ),
                        {"id": document["id"]},
                    )
                ).scalars()
                stored_vectors = [list(vector) for vector in stored]

    requests = stub.requests_to(EMBEDDINGS)
    # Each chunk holds the vector the provider gave its text, batch after batch, in order
    # (as float4, which is how they are stored).
    sent = [t for r in requests[:-1] for t in r.body["input"]]
    expected = [np.asarray(stub.vector(t, 384), dtype=np.float32).tolist() for t in sent]
    assert stored_vectors == expected
    assert document["chunkCount"] == 5
    # 5 chunks in batches of 2, then the query.
    assert [len(r.body["input"]) for r in requests] == [2, 2, 1, 1]
    assert {r.body["model"] for r in requests} == {"text-embedding-3-small"}
    assert {r.body["dimensions"] for r in requests} == {384}
    assert {r.body["encoding_format"] for r in requests} == {"float"}
    assert requests[0].headers["authorization"] == "Bearer test-key"
    assert requests[-1].body["input"] == ["subject 3"]
    assert "Facts about subject 3." in hits[0]["chunk"]["content"]


async def test_client_retries_429_then_succeeds(settings: Settings) -> None:
    async with OpenAIStub() as stub:
        stub.fail(EMBEDDINGS, times=2, status=429)
        embedder = OpenAIEmbedder(
            openai_client(_online(settings, stub, openai_max_retries=3)),
            model="m",
            dimensions=16,
        )
        try:
            vectors = await embedder.embed(["one", "two"])
        finally:
            await embedder.aclose()
    assert len(vectors) == 2
    assert all(len(v) == 16 for v in vectors)
    assert len(stub.requests_to(EMBEDDINGS)) == 3


async def test_wrong_dimensions_from_the_provider_are_a_permanent_error(
    settings: Settings,
) -> None:
    async with OpenAIStub() as stub:
        embedder = OpenAIEmbedder(
            openai_client(_online(settings, stub)),
            model="m",
            dimensions=16,
            request_dimensions=False,  # the stub then answers with its default size
        )
        try:
            with pytest.raises(EmbeddingError) as raised:
                await embedder.embed(["text"])
        finally:
            await embedder.aclose()
    assert raised.value.transient is False
    assert "1536 dimensions" in str(raised.value)


async def test_dimension_mismatch_refuses_to_start_until_reindexed(settings: Settings) -> None:
    async with running_server(settings) as server:
        account = await server.register()
        await ingest_text(server, account.access_token, "Re-embed me at 64 dimensions.")

    resized = settings.model_copy(update={"embedding_dimensions": 64})
    state = Backend(settings=resized)
    async with connect(state):
        with pytest.raises(ConfigurationError, match="ragstream reindex"):
            await check_embedding_dimensions(state)
        previous, count = await reindex(state.sessionmaker, state.embedder, batch_size=1)
        await check_embedding_dimensions(state)
        async with state.sessionmaker() as session:
            stored = await session.scalar(text("SELECT vector_dims(embedding) FROM chunks"))
            index = await session.scalar(
                text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_chunks_embedding_hnsw'")
            )

    assert (previous, count) == (384, 1)
    assert stored == 64
    assert index == 1
    async with running_server(resized) as server:
        hits = (
            await server.execute(SEARCH, {"q": "re-embed dimensions"}, token=account.access_token)
        ).ok()["search"]
    assert len(hits) == 1
