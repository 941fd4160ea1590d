"""Retrieval queries: nearest chunks by embedding (HNSW) and by full text (GIN).

Both only ever consider chunks of documents the viewer may read; the filter is part of the
statement that ranks, not applied afterwards, and HNSW's iterative scan keeps filtered
queries returning ``k`` rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import User

# Own documents and shared ones: retrieval never reaches another user's private document,
# not even for an administrator.
_READABLE = "(d.owner_id = :viewer OR d.visibility = 'SHARED')"


def vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


@dataclass(frozen=True)
class ChunkHit:
    chunk_id: uuid.UUID
    document_id: uuid.UUID
    document_title: str
    ordinal: int
    content: str
    page: int | None
    heading_path: list[str]
    token_count: int


class SearchRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def nearest_by_vector(
        self, viewer: User, vector: Sequence[float], k: int, *, exact: bool = False
    ) -> list[uuid.UUID]:
        """Chunk ids by cosine distance, closest first.

        ``exact`` bypasses the HNSW index (a full scan): the ground truth the index is
        measured against.
        """
        if exact:
            await self.session.execute(text("SET LOCAL enable_indexscan = off"))
        else:
            await self.session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
            # ef_search bounds the candidate list of each scan round; it must cover k.
            await self.session.execute(text(f"SET LOCAL hnsw.ef_search = {max(40, int(k))}"))
        try:
            rows = await self.session.execute(
                text(
                    # relaxed_order may return slightly out of order: materialize, then sort.
                    "WITH nearest AS MATERIALIZED ("  # noqa: S608  (constant SQL)
                    " SELECT c.id, c.embedding <=> CAST(:vector AS vector) AS distance"
                    " FROM chunks c JOIN documents d ON d.id = c.document_id"
                    f" WHERE {_READABLE} AND c.embedding IS NOT NULL"
                    " ORDER BY distance LIMIT :k"
                    ") SELECT id FROM nearest ORDER BY distance, id"
                ),
                {"viewer": viewer.id, "vector": vector_literal(vector), "k": k},
            )
            return [row[0] for row in rows]
        finally:
            if exact:
                await self.session.execute(text("SET LOCAL enable_indexscan = on"))

    async def best_by_text(self, viewer: User, query: str, k: int) -> list[uuid.UUID]:
        """Chunk ids matching any word of ``query``, best ranked first."""
        rows = await self.session.execute(
            text(
                # plainto_tsquery ANDs the words; a question rarely contains all of a
                # passage's words, so they are ORed (and ranked) instead.
                "WITH q AS (SELECT CAST(replace(CAST(plainto_tsquery('english', :query) AS text),"  # noqa: S608  (constant SQL)
                " ' & ', ' | ') AS tsquery) AS query)"
                " SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id, q"
                f" WHERE c.tsv @@ q.query AND {_READABLE}"
                " ORDER BY ts_rank(c.tsv, q.query, 1) DESC, c.id LIMIT :k"
            ),
            {"viewer": viewer.id, "query": query, "k": k},
        )
        return [row[0] for row in rows]

    async def load(self, viewer: User, chunk_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, ChunkHit]:
        if not chunk_ids:
            return {}
        rows = await self.session.execute(
            text(
                "SELECT c.id, c.document_id, d.title, c.ordinal, c.content, c.page,"  # noqa: S608  (constant SQL)
                " c.heading_path, c.token_count"
                " FROM chunks c JOIN documents d ON d.id = c.document_id"
                f" WHERE c.id = ANY(:ids) AND {_READABLE}"
            ),
            {"viewer": viewer.id, "ids": list(chunk_ids)},
        )
        return {
            row[0]: ChunkHit(
                chunk_id=row[0],
                document_id=row[1],
                document_title=row[2],
                ordinal=row[3],
                content=row[4],
                page=row[5],
                heading_path=list(row[6] or []),
                token_count=row[7],
            )
            for row in rows
        }
