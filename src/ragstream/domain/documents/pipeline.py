"""The ingestion pipeline: parse -> chunk -> embed -> store, for one document.

Each step that writes is its own short transaction; the chunks and the READY status are
written together, so a document is never READY with half its chunks.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.chunk_copy import chunk_copy_payload
from ragstream.db.repositories.documents import Claim, DocumentRepository
from ragstream.domain.documents.enums import DocumentStatus
from ragstream.domain.documents.events import publish_status
from ragstream.domain.documents.parsing import ParseError
from ragstream.domain.documents.reading import (
    ReadingLimits,
    embedding_text,
    read_and_encode,
    read_document,
)
from ragstream.domain.events import EventBroker
from ragstream.domain.llm.embeddings import Embedder, EmbeddingError, HashingEmbedder
from ragstream.observability.metrics import Metrics
from ragstream.observability.tracing import Tracing
from ragstream.workpool import JobTimeout, WorkPool, WorkPoolBroken

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestionDeps:
    sessionmaker: async_sessionmaker[AsyncSession]
    embedder: Embedder
    broker: EventBroker
    # Parsing and chunking run here, never on the event loop.
    work: WorkPool
    limits: ReadingLimits = field(default_factory=ReadingLimits)
    embedding_batch_size: int = 64
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing = field(default_factory=Tracing)


class RetryableIngestionError(Exception):
    """A failure worth another attempt later (provider down, rate-limited, database hiccup)."""


def timed_out(limits: ReadingLimits) -> str:
    return (
        f"reading the document took longer than {limits.timeout_seconds:g} s, the limit for "
        "one document"
    )


async def _set_status(
    deps: IngestionDeps,
    document_id: uuid.UUID,
    status: DocumentStatus,
    *,
    error: str | None = None,
    only_from: tuple[DocumentStatus, ...] | None = None,
) -> bool:
    async with deps.sessionmaker.begin() as session:
        repo = DocumentRepository(session)
        document = await repo.get_for_ingestion(document_id, for_update=True)
        if document is None or (only_from is not None and document.status not in only_from):
            return False
        await repo.set_status(document, status, error=error)
    await publish_status(deps.broker, document)
    return True


async def mark_failed(deps: IngestionDeps, document_id: uuid.UUID, error: str) -> None:
    await _set_status(deps, document_id, DocumentStatus.FAILED, error=error)


async def mark_retrying(deps: IngestionDeps, document_id: uuid.UUID) -> None:
    await _set_status(
        deps, document_id, DocumentStatus.PENDING, only_from=(DocumentStatus.PROCESSING,)
    )


async def ingest_document(deps: IngestionDeps, document_id: uuid.UUID) -> DocumentStatus | None:
    """Run the pipeline; returns the final status, or None when the document no longer exists.

    Unreadable content ends FAILED at once (retrying cannot help). Provider and database
    failures raise RetryableIngestionError for the job queue to retry.
    """
    async with deps.sessionmaker.begin() as session:
        claimed = await DocumentRepository(session).claim_for_ingestion(document_id)
    if not isinstance(claimed, Claim):
        return claimed  # None (gone), or READY: a duplicate job for work already done
    await publish_status(deps.broker, claimed.change)

    if claimed.data is None:
        await mark_failed(deps, document_id, "the uploaded file is missing")
        return DocumentStatus.FAILED
    limits, title, mime_type = deps.limits, claimed.title, claimed.mime_type
    # The offline embedder is CPU work like reading: both run in one trip to the work pool,
    # which hands back the chunks ready to COPY.
    offline = isinstance(deps.embedder, HashingEmbedder)
    try:
        with deps.tracing.span("ingestion.read", **{"document.mime_type": mime_type}):
            if offline:
                count, payload = await deps.work.run(
                    read_and_encode,
                    mime_type,
                    claimed.data,
                    limits,
                    document_id,
                    title,
                    deps.embedder.dimensions,
                    deps.embedding_batch_size,
                    time_limit=limits.timeout_seconds,
                )
            else:
                drafts = await deps.work.run(
                    read_document,
                    mime_type,
                    claimed.data,
                    limits,
                    time_limit=limits.timeout_seconds,
                )
    except ParseError as exc:
        await mark_failed(deps, document_id, str(exc))
        return DocumentStatus.FAILED
    except JobTimeout:
        await mark_failed(deps, document_id, timed_out(limits))
        return DocumentStatus.FAILED
    except WorkPoolBroken as exc:
        raise RetryableIngestionError(str(exc)) from exc
    del claimed  # the chunks hold the text now

    if not offline:  # a provider's embeddings: network calls from here
        import numpy as np

        texts = [embedding_text(title, d.heading_path, d.content) for d in drafts]
        # Each batch becomes an array as it comes: one conversion of the whole document's
        # vectors would hold the event loop for about 0.25 s at 5,000 chunks of 1,536
        # dimensions, against a few ms per batch.
        batches: list[np.ndarray] = []
        try:
            with deps.tracing.span("ingestion.embed", **{"ingestion.chunks": len(texts)}):
                for start in range(0, len(texts), deps.embedding_batch_size):
                    batch = texts[start : start + deps.embedding_batch_size]
                    embedded = await deps.embedder.embed(batch)
                    batches.append(np.asarray(embedded, dtype=np.float32))
        except EmbeddingError as exc:
            if exc.transient:
                raise RetryableIngestionError(str(exc)) from exc
            await mark_failed(deps, document_id, f"embedding failed: {exc}")
            return DocumentStatus.FAILED
        except JobTimeout:
            await mark_failed(deps, document_id, timed_out(limits))
            return DocumentStatus.FAILED
        except WorkPoolBroken as exc:
            raise RetryableIngestionError(str(exc)) from exc
        vectors = np.concatenate(batches) if batches else np.empty((0, 0), dtype=np.float32)
        # Packing the rows is Python work too (tens of ms for thousands of chunks): in a
        # thread, which lets the event loop in between.
        payload = await asyncio.to_thread(chunk_copy_payload, document_id, drafts, vectors)
        count = len(drafts)

    with deps.tracing.span("ingestion.store", **{"ingestion.chunks": count}):
        async with deps.sessionmaker.begin() as session:
            ready = await DocumentRepository(session).store_chunks(document_id, payload, count)
    if ready is None:
        return None
    await publish_status(deps.broker, ready)
    logger.info("document %s ready: %d chunks", document_id, count)
    return DocumentStatus.READY
