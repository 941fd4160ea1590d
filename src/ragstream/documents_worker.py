"""Wiring of the knowledge base into a running process (server, worker, CLI commands)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ragstream.db.repositories.documents import embedding_column_dimensions
from ragstream.domain.documents.jobs import running_worker
from ragstream.domain.documents.pipeline import IngestionDeps
from ragstream.domain.documents.reading import ReadingLimits
from ragstream.settings import ConfigurationError

if TYPE_CHECKING:
    from ragstream.backend import Backend

logger = logging.getLogger(__name__)


def ingestion_deps(state: Backend) -> IngestionDeps:
    settings = state.settings
    return IngestionDeps(
        sessionmaker=state.sessionmaker,
        embedder=state.embedder,
        broker=state.broker,
        work=state.work,
        limits=ReadingLimits(
            target_tokens=settings.chunk_target_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
            max_text_chars=settings.ingestion_max_text_chars,
            max_chunks=settings.ingestion_max_chunks,
            max_token_chars=settings.ingestion_max_token_chars,
            timeout_seconds=settings.ingestion_timeout_seconds,
        ),
        embedding_batch_size=settings.embedding_batch_size,
        metrics=state.metrics,
        tracing=state.tracing,
    )


async def check_embedding_dimensions(state: Backend) -> None:
    """Refuse to run when stored vectors and the embedder disagree on their size."""
    async with state.sessionmaker() as session:
        stored = await embedding_column_dimensions(session)
    wanted = state.embedder.dimensions
    if stored is not None and stored != wanted:
        raise ConfigurationError(
            f"the database stores {stored}-dimensional embeddings but the embedder "
            f"({state.embedder.name}) makes {wanted}-dimensional ones; run `ragstream reindex` "
            "to re-embed every chunk, or set RAGSTREAM_EMBEDDING_DIMENSIONS back to "
            f"{stored}"
        )


@contextlib.asynccontextmanager
async def ingestion_worker(
    state: Backend, *, enabled: bool | None = None, signal_handlers: bool = False
) -> AsyncIterator[asyncio.Task[None] | None]:
    """Check the vector size, then run an ingestion worker while the block runs.

    ``enabled`` None follows the ``ingestion_worker`` setting (what `ragstream serve` does).
    Yields the worker task (it ends when the worker stops), or None without a worker.
    """
    await check_embedding_dimensions(state)
    if not (state.settings.ingestion_worker if enabled is None else enabled):
        yield None
        return
    assert state.database_url is not None
    async with running_worker(
        state.settings,
        state.database_url,
        ingestion_deps(state),
        in_process=not signal_handlers,
    ) as task:
        yield task
