"""Retrieval queries: nearest chunks by embedding (HNSW) and by full text (GIN).

Both only ever consider chunks of documents retrieval may return to the viewer (the documents
repository's `retrievable_by`); the filter is part of the statement that ranks, not applied
afterwards, and HNSW's iterative scan keeps filtered
queries returning ``k`` rows.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    ARRAY,
    Float,
    Integer,
    Select,
    Text,
    Uuid,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal,
    select,
    table,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import TSQUERY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from ragstream.db.driver import DriverStatement
from ragstream.db.models import User
from ragstream.db.models.documents import TEXT_SEARCH_CONFIG, Chunk, Document
from ragstream.db.repositories.base import Repository
from ragstream.db.repositories.documents import retrievable_by, retrievable_by_id

# The lexemes of a query with the share of chunks holding each, from the statistics ANALYZE
# keeps for the tsvector column (its most common lexemes). A lexeme missing from that list is
# rarer than every listed one: its share is null. The shares are over all chunks; they only
# decide which words select candidates, while the readable filter applies to every row.
_QUERY_TERMS = DriverStatement(
    text(
        "SELECT t.lexeme, s.share"  # noqa: S608  (constant SQL)
        f" FROM unnest(to_tsvector('{TEXT_SEARCH_CONFIG}', :query)) AS t"
        " LEFT JOIN (SELECT e.lexeme, e.share FROM pg_stats p,"
        "  unnest(CAST(CAST(p.most_common_elems AS text) AS text[]), p.most_common_elem_freqs)"
        "   AS e(lexeme, share)"
        "  WHERE p.schemaname = current_schema() AND p.tablename = 'chunks'"
        "  AND p.attname = 'tsv' AND NOT p.inherited) AS s ON s.lexeme = t.lexeme"
        " ORDER BY t.lexeme"
    )
    .bindparams(bindparam("query", type_=Text))
    .columns(column("lexeme", Text), column("share", Float))
)


def vector_literal(vector: Sequence[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


def tsquery_literal(lexemes: Sequence[str], operator: str) -> str:
    """``lexemes`` joined by ``|`` or ``&`` in tsquery input syntax, each taken literally.

    Every lexeme is quoted, with quotes and backslashes doubled, so no lexeme can read as an
    operator, a weight or a prefix marker.
    """
    if operator not in ("|", "&"):
        raise ValueError(f"not a tsquery operator: {operator!r}")
    quoted = ("'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'" for lexeme in lexemes)
    return f" {operator} ".join(quoted)


def index_scan_settings(ef_search: int, max_scan_tuples: int) -> dict[str, str]:
    """Planner settings of the vector statement through the HNSW index."""
    return {
        "hnsw.iterative_scan": "relaxed_order",
        "hnsw.ef_search": str(int(ef_search)),
        "hnsw.max_scan_tuples": str(int(max_scan_tuples)),
        # On a small table the planner prices a large ef_search above a sequential scan
        # and sorts every readable chunk instead; measured, the index is the faster path.
        # Index plans (such as a viewer's own few documents, then their chunks) stay open.
        "enable_seqscan": "off",
        # A generic plan would not see how selective the viewer's filter is.
        "plan_cache_mode": "force_custom_plan",
    }


def nearest_statement(
    viewer: User, vector: Sequence[float], k: int, *, scan: int | None = None
) -> Select[tuple[uuid.UUID]]:
    """The ids of the ``k`` readable chunks closest to ``vector`` among the ``scan`` (default
    ``k``) candidates the scan of the embedding's order hands over (`_NEAREST` with these
    values)."""
    return _NEAREST_SELECT.params(
        viewer_id=viewer.id, vector=vector_literal(vector), k=k, scan=scan or k
    )


# Query vectors and tsqueries are sent as text and cast in the statement, as pgvector and
# PostgreSQL parse them; the planner still sees their values (custom plans: see
# `index_scan_settings`).
def nearest_select(
    scan_order: Callable[[BindParameter[str]], ColumnElement[float]] | None = None,
) -> Select[tuple[uuid.UUID]]:
    """The nearest readable chunks, with bind parameters for the viewer, the vector and both
    limits; compiled once, the planner still sees their values (custom plans, see
    `index_scan_settings`). ``scan_order``: what the candidates are scanned by, given the
    query vector's parameter (the full vectors' distance by default; another index's order
    in `bench.vector_designs`); they are kept by the full vectors' distance either way."""
    # relaxed_order may return candidates out of order: materialize them, then sort by
    # the distance (exact: the index holds the full vectors) and keep the closest k. The
    # sort is on `distance + 0`: PostgreSQL knows the CTE's rows come ordered by
    # `distance`, and a sort on that would only break ties, leave the scan's order as it
    # came, and read just the first k candidates.
    vector = bindparam("vector", type_=Text)
    distance = Chunk.embedding.op("<=>", return_type=Float)(cast(vector, Vector())).label(
        "distance"
    )
    candidates = (
        select(Chunk.id, distance)
        .join(Document, Document.id == Chunk.document_id)
        .where(retrievable_by_id(bindparam("viewer_id", type_=Uuid)))
        .where(Chunk.embedding.is_not(None))
        .order_by(distance if scan_order is None else scan_order(vector))
        .limit(bindparam("scan", type_=Integer))
        .cte("candidates")
        .prefix_with("MATERIALIZED")
    )
    return (
        select(candidates.c.id)
        .order_by(candidates.c.distance + 0, candidates.c.id)
        .limit(bindparam("k", type_=Integer))
    )


_NEAREST_SELECT = nearest_select()
_NEAREST = DriverStatement(_NEAREST_SELECT)

_BEST_BY_TEXT = DriverStatement(
    select(Chunk.id)
    .join(Document, Document.id == Chunk.document_id)
    .where(retrievable_by_id(bindparam("viewer_id", type_=Uuid)))
    .where(Chunk.tsv.op("@@")(cast(bindparam("matching", type_=Text), TSQUERY)))
    .order_by(
        func.ts_rank(Chunk.tsv, cast(bindparam("ranking", type_=Text), TSQUERY), 1).desc(),
        Chunk.id,
    )
    .limit(bindparam("k", type_=Integer))
)


@functools.cache
def _setting(names: tuple[str, ...]) -> DriverStatement:
    """Sets each of ``names`` (to the parameter ``value<i>``) until the transaction ends,
    beginning the session's transaction if no statement has yet."""
    return DriverStatement(
        select(
            *(
                func.set_config(literal(name), bindparam(f"value{i}", type_=Text), true())
                for i, name in enumerate(names)
            )
        ),
        begins=True,
    )


_SETTINGS = table("pg_settings", column("name", Text), column("reset_val", Text))
# Each setting named (``names``) back to its session value, for the rest of the transaction.
_RESETTING = DriverStatement(
    select(func.count(func.set_config(_SETTINGS.c.name, _SETTINGS.c.reset_val, true()))).where(
        _SETTINGS.c.name == any_(bindparam("names", type_=ARRAY(Text)))
    )
)


@dataclass(frozen=True)
class QueryTerm:
    lexeme: str
    # Estimated fraction of all chunks that contain the lexeme; None when it is rare enough
    # not to be among the most common lexemes PostgreSQL keeps statistics for.
    share: float | None


@dataclass(frozen=True)
class SearchResult:
    """A retrieved chunk with its document (read in the same statement); the ranking fields
    are filled by the retrieval service once the rankings are fused."""

    chunk_id: uuid.UUID
    document: Document
    ordinal: int
    content: str
    page: int | None
    heading_path: list[str]
    token_count: int
    score: float = 0.0
    vector_rank: int | None = None
    text_rank: int | None = None

    @property
    def document_id(self) -> uuid.UUID:
        return self.document.id

    @property
    def document_title(self) -> str:
        return self.document.title


class SearchRepository(Repository):
    """``own_transaction``: the session's transaction is retrieval's alone (it ends when
    retrieval does), so planner settings need not be set back after their statement."""

    def __init__(self, session: AsyncSession, *, own_transaction: bool = False) -> None:
        super().__init__(session)
        self.own_transaction = own_transaction

    async def nearest_by_vector(
        self,
        viewer: User,
        vector: Sequence[float],
        k: int,
        *,
        scan: int,
        ef_search: int,
        max_scan_tuples: int,
    ) -> list[uuid.UUID]:
        """Chunk ids by cosine distance, closest first, through the HNSW index.

        The scan goes on until it has handed over ``scan`` readable candidates (at least
        ``k``); they are ordered by their exact distance and the closest ``k`` kept. A graph
        search misses some true neighbours; asking it for more candidates than are kept lets
        its later rounds bring them in. ``ef_search`` is the candidate list of each scan
        round; ``max_scan_tuples`` bounds how far an iterative scan goes.
        """
        settings = index_scan_settings(ef_search, max_scan_tuples)
        return await self._nearest(viewer, vector, k, settings, scan=max(int(scan), int(k)))

    async def exact_nearest_by_vector(
        self, viewer: User, vector: Sequence[float], k: int
    ) -> list[uuid.UUID]:
        """The same statement without the index (every readable chunk compared): the ground
        truth HNSW recall is measured against."""
        return await self._nearest(viewer, vector, k, {"enable_indexscan": "off"})

    async def _nearest(
        self,
        viewer: User,
        vector: Sequence[float],
        k: int,
        settings: dict[str, str],
        *,
        scan: int | None = None,
    ) -> list[uuid.UUID]:
        params = {"viewer_id": viewer.id, "vector": vector_literal(vector), "k": k}
        async with self._scoped(settings):
            rows = await _NEAREST.fetch(self.session, {**params, "scan": scan or k})
        return [row[0] for row in rows]

    async def query_terms(self, query: str) -> list[QueryTerm]:
        """The distinct lexemes of ``query`` (as the chunks' full text indexes words), with
        the share of chunks holding each as far as PostgreSQL's statistics know it."""
        rows = await _QUERY_TERMS.fetch(self.session, {"query": query})
        return [QueryTerm(lexeme=row[0], share=row[1]) for row in rows]

    async def best_by_text(
        self,
        viewer: User,
        match: Sequence[str],
        rank: Sequence[str],
        k: int,
        *,
        match_all: bool = False,
    ) -> list[uuid.UUID]:
        """Chunk ids holding any (or with ``match_all``, every) lexeme of ``match``, best
        first by ``ts_rank`` against all of ``rank``.

        Only the matching chunks are ranked, through the GIN index: the cost follows how
        many chunks ``match`` selects, which is why the caller leaves very common words out
        of it.
        """
        if not match:
            return []
        rows = await _BEST_BY_TEXT.fetch(
            self.session,
            {
                "viewer_id": viewer.id,
                "matching": tsquery_literal(match, "&" if match_all else "|"),
                "ranking": tsquery_literal(rank or match, "|"),
                "k": k,
            },
        )
        return [row[0] for row in rows]

    async def load(
        self, viewer: User, chunk_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, SearchResult]:
        if not chunk_ids:
            return {}
        rows = await self.session.execute(
            select(
                Chunk.id,
                Document,
                Chunk.ordinal,
                Chunk.content,
                Chunk.page,
                Chunk.heading_path,
                Chunk.token_count,
            )
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(chunk_ids), retrievable_by(viewer))
        )
        return {
            row[0]: SearchResult(
                chunk_id=row[0],
                document=row[1],
                ordinal=row[2],
                content=row[3],
                page=row[4],
                heading_path=list(row[5] or []),
                token_count=row[6],
            )
            for row in rows
        }

    @contextlib.asynccontextmanager
    async def _scoped(self, settings: dict[str, str]) -> AsyncIterator[None]:
        """``settings`` for the statements inside the block.

        They are set for the rest of the transaction and, unless the repository's
        transaction is retrieval's alone (``own_transaction``), set back to the session's
        values after the block, so the caller's transaction goes on with its own.
        """
        names = tuple(settings)
        values = {f"value{i}": settings[name] for i, name in enumerate(names)}
        await _setting(names).fetch(self.session, values)
        yield
        # (Not after a failure: the transaction is then only good for its ROLLBACK, which
        # ends the settings with it.)
        if not self.own_transaction:
            await _RESETTING.fetch(self.session, {"names": list(names)})
