"""Re-embed every chunk, after changing the embedding model or its dimension, and rebuild the
HNSW index, optionally with other build parameters."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.repositories.documents import (
    HnswOptions,
    IndexBuild,
    VectorIndexRepository,
    embedding_column_dimensions,
)
from ragstream.domain.documents.reading import embedding_text
from ragstream.domain.llm.embeddings import Embedder

# Room for the graph while the index is built (see IndexBuild). It is an upper bound for this
# one statement, not memory held by the server.
BUILD_MEMORY = IndexBuild.memory


async def rebuild_index(
    sessionmaker: async_sessionmaker[AsyncSession],
    options: HnswOptions | None = None,
    *,
    build: IndexBuild | None = None,
) -> HnswOptions:
    """Build the HNSW index anew and swap it in for the existing one.

    Searches go on using the old index while the new one is built (writes to chunks wait);
    the swap at the end is a short exclusive lock. ``options`` None keeps the build
    parameters of the existing index; ``build`` None builds with 1 GB and the server's
    parallel workers. Returns the parameters used.
    """
    async with sessionmaker.begin() as session:
        repo = VectorIndexRepository(session)
        options = options or await repo.index_options() or HnswOptions()
        await repo.replace_index(options, build or IndexBuild())
    return options


async def reindex(
    sessionmaker: async_sessionmaker[AsyncSession],
    embedder: Embedder,
    *,
    batch_size: int = 64,
    options: HnswOptions | None = None,
    build: IndexBuild | None = None,
    on_start: Callable[[int], None] = lambda total: None,
    on_progress: Callable[[int], None] = lambda done: None,
) -> tuple[int | None, int]:
    """Resize the vector column if needed, re-embed all chunks, rebuild the HNSW index.

    Returns the previous dimension and the number of chunks embedded. Each batch commits on
    its own, so an interrupted run can simply be started again. ``options`` None keeps the
    existing index's build parameters.
    """
    async with sessionmaker.begin() as session:
        repo = VectorIndexRepository(session)
        previous = await embedding_column_dimensions(session)
        options = options or await repo.index_options() or HnswOptions()
        if previous != embedder.dimensions:
            await repo.resize(embedder.dimensions)
        else:
            # Updating every vector through a live index costs an index insert per chunk;
            # building it once at the end is faster.
            await repo.drop_index()
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
    await rebuild_index(sessionmaker, options, build=build)
    return previous, done
