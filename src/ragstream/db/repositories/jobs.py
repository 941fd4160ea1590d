"""The ingestion job queue's rows, written in the caller's transaction.

Jobs are procrastinate jobs. Deferring goes through procrastinate's versioned SQL function
(``procrastinate_defer_jobs_v1``, the one its own connectors call) on *our* connection, so a
document and its job are committed together or not at all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

INGESTION_QUEUE = "ingestion"
INGEST_TASK = "ragstream.ingest_document"


def document_lock(document_id: uuid.UUID) -> str:
    return f"document:{document_id}"


# The call that queues a document's ingestion job, as a column of a SELECT: on its own
# (``JobRepository``) or inside the statement that stores a new document
# (``DocumentRepository.add``); its parameters are ``job_parameters``.
INGESTION_JOB = text(
    "procrastinate_defer_jobs_v1(ARRAY[ROW("
    ":queue, :task, 0, :lock, :lock, CAST(:args AS jsonb), NULL"
    ")::procrastinate_job_to_defer_v1])"
).bindparams(queue=INGESTION_QUEUE, task=INGEST_TASK)


def job_parameters(document_id: uuid.UUID) -> dict[str, str]:
    """The parameters of ``INGESTION_JOB`` for one document."""
    return {
        "lock": document_lock(document_id),
        "args": json.dumps({"document_id": str(document_id)}),
    }


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def enqueue_ingestion(self, document_id: uuid.UUID) -> bool:
        """Queue an ingestion job for an existing document; False when one is already waiting
        for it. (A new document's job is queued by the statement that stores it.)

        ``lock`` keeps two jobs of one document from running at once; ``queueing_lock`` keeps
        at most one of them waiting.
        """
        try:
            async with self.session.begin_nested():
                await self._defer(document_id)
        except IntegrityError:
            return False
        return True

    async def _defer(self, document_id: uuid.UUID) -> None:
        await self.session.execute(select(INGESTION_JOB), job_parameters(document_id))

    async def without_live_job(self, document_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        """Those of ``document_ids`` with no job waiting or running for them."""
        if not document_ids:
            return []
        locks = [document_lock(i) for i in document_ids]
        rows = await self.session.execute(
            text(
                "SELECT DISTINCT lock FROM procrastinate_jobs "
                "WHERE lock = ANY(:locks) AND status IN ('todo', 'doing')"
            ),
            {"locks": locks},
        )
        live = {row[0] for row in rows}
        return [i for i, lock in zip(document_ids, locks, strict=True) if lock not in live]

    async def cancel_waiting(self, document_id: uuid.UUID) -> None:
        await self.session.execute(
            text(
                "UPDATE procrastinate_jobs SET status = 'cancelled' "
                "WHERE lock = :lock AND status = 'todo'"
            ),
            {"lock": document_lock(document_id)},
        )

    async def counts_by_state(self) -> dict[str, int]:
        """Ingestion jobs per procrastinate status; the waiting and running ones always listed."""
        rows = await self.session.execute(
            text(
                "SELECT status::text, count(*) FROM procrastinate_jobs "
                "WHERE queue_name = :queue GROUP BY status"
            ),
            {"queue": INGESTION_QUEUE},
        )
        counts = {"todo": 0, "doing": 0}
        counts.update({str(status): int(count) for status, count in rows})
        return counts
