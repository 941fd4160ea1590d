"""Re-embed every chunk, after changing the embedding model or its dimension."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.repositories.documents import VectorIndexRepository, embedding_column_dimensions
from ragstream.domain.documents.pipeline import embedding_text
from ragstream.domain.llm.embeddings import Embedder


async def reindex(
    sessionmaker: async_sessionmaker[AsyncSession],
    embedder: Embedder,
    *,
    batch_size: int = 64,
    on_start: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> tuple[int | None, int]:
    """Resize the vector column if needed, re-embed all chunks, rebuild the HNSW index.

    Returns the previous dimension and the number of chunks embedded. Each batch commits on
    its own, so an interrupted run can simply be started again.
    """
    async with sessionmaker.begin() as session:
        repo = VectorIndexRepository(session)
        previous = await embedding_column_dimensions(session)
        if previous != embedder.dimensions:
            await repo.resize(embedder.dimensions)
        total = await repo.count_chunks()
    on_start(total)
    done = 0
    after: uuid.UUID | None = None
    while True:
        async with sessionmaker() as session:
            batch = await VectorIndexRepository(session).batch_after(after, batch_size)
        if not batch:
            break
        vectors = await embedder.embed(
            [embedding_text(c.title, c.heading_path, c.content) for c in batch]
        )
        async with sessionmaker.begin() as session:
            await VectorIndexRepository(session).set_embeddings(
                [(c.id, v) for c, v in zip(batch, vectors, strict=True)]
            )
        done += len(batch)
        after = batch[-1].id
        on_progress(done)
    async with sessionmaker.begin() as session:
        await VectorIndexRepository(session).ensure_index()
    return previous, done
