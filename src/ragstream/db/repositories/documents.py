"""Documents and chunks. Who may see what is decided here, inside each statement."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    bindparam,
    delete,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value

# Re-exported: benchmarks copy rows into ``chunks`` with it.
from ragstream.db.chunk_copy import CHUNK_COPY_COLUMNS as CHUNK_COPY_COLUMNS
from ragstream.db.list_search import contains, plan_for_the_term
from ragstream.db.models.documents import Chunk, Document, DocumentContent
from ragstream.db.models.users import User
from ragstream.db.pagination import (
    Page,
    PageRequest,
    ParentPageKey,
    paginate,
    paginate_parents,
    parent_page_key,
)
from ragstream.db.repositories.base import ReadableRepository
from ragstream.db.repositories.jobs import INGESTION_JOB, job_parameters
from ragstream.db.unit_of_work import mark_written
from ragstream.domain.documents.enums import UNFINISHED_STATUSES, DocumentStatus, Visibility

# A document's chunks in reading order (the cursor of Document.chunks).
_CHUNK_PAGE_KEYS = (Chunk.ordinal, Chunk.id)


@dataclass(frozen=True)
class StatusChange:
    """A document's status as a write left it: what a status event carries."""

    id: uuid.UUID
    status: DocumentStatus
    error: str | None
    chunk_count: int
    updated_at: datetime


@dataclass(frozen=True)
class Claim:
    """A document an ingestion job has marked PROCESSING, with what reading it needs."""

    change: StatusChange
    title: str
    mime_type: str
    data: bytes | None  # None when the uploaded bytes are missing


# What a new document is inserted with (the timestamps are the database's).
_NEW_DOCUMENT_COLUMNS = (
    "id",
    "owner_id",
    "title",
    "filename",
    "mime_type",
    "size_bytes",
    "content_sha256",
    "visibility",
    "status",
    "error",
    "chunk_count",
)
_STATUS_COLUMNS = (
    Document.id,
    Document.status,
    Document.error,
    Document.chunk_count,
    Document.updated_at,
)

# The statements every upload and every ingestion job run, built once: building a Core
# statement costs more than running it through SQLAlchemy's compiled cache. Their values are
# bound parameters.

# A new document (on_conflict_do_nothing: unless its owner has the same content already),
# its uploaded bytes and its ingestion job; the timestamps the database filled in.
_INSERTED = (
    insert(Document)
    .values(
        {
            column: bindparam(f"new_{column}", type_=Document.__table__.c[column].type)
            for column in _NEW_DOCUMENT_COLUMNS
        }
    )
    .on_conflict_do_nothing(constraint="uq_documents_owner_id_content_sha256")
    .returning(Document.id, Document.created_at, Document.updated_at)
    .cte("inserted")
)
_ADD = select(_INSERTED.c.created_at, _INSERTED.c.updated_at, INGESTION_JOB).add_cte(
    insert(DocumentContent)
    .from_select(
        ["document_id", "data"],
        select(_INSERTED.c.id, bindparam("data", type_=DocumentContent.data.type)),
    )
    .cte("stored")
)

# A job's claim: PROCESSING unless READY already, with what reading the document needs.
_CLAIM = (
    update(Document)
    .where(Document.id == bindparam("document_id"), Document.status != DocumentStatus.READY)
    .values(status=DocumentStatus.PROCESSING, error=None, updated_at=func.now())
    .returning(
        *_STATUS_COLUMNS,
        Document.title,
        Document.mime_type,
        select(DocumentContent.data)
        .where(DocumentContent.document_id == Document.id)
        .correlate(Document)
        .scalar_subquery(),
    )
)

# A job's end: the document locked and READY with its new chunk count, its old chunks gone.
_MARKED = (
    update(Document)
    .where(Document.id == bindparam("document_id"))
    .values(
        status=DocumentStatus.READY,
        error=None,
        chunk_count=bindparam("chunk_count"),
        updated_at=func.now(),
    )
    .returning(*_STATUS_COLUMNS)
    .cte("marked")
)
_MARK_READY = select(_MARKED).add_cte(
    delete(Chunk).where(Chunk.document_id.in_(select(_MARKED.c.id))).cte("old_chunks")
)


def retrievable_by(viewer: User) -> ColumnElement[bool]:
    """Documents whose passages retrieval may return to the viewer: own and shared ones.

    Narrower than ``DocumentRepository.readable_by`` on purpose: search and chat never reach
    another user's private document, not even for an administrator.
    """
    return retrievable_by_id(viewer.id)


def retrievable_by_id(viewer_id: uuid.UUID | BindParameter[uuid.UUID]) -> ColumnElement[bool]:
    """`retrievable_by` for the viewer ``viewer_id`` (a value, or a statement's parameter)."""
    return or_(Document.owner_id == viewer_id, Document.visibility == Visibility.SHARED)


class DocumentRepository(ReadableRepository[Document]):
    model = Document

    @classmethod
    def readable_by(cls, viewer: User) -> ColumnElement[bool]:
        """Documents the viewer may look at: own and shared ones, and every one for an admin."""
        return true() if viewer.is_admin else retrievable_by(viewer)

    @staticmethod
    def managed_by(viewer: User) -> ColumnElement[bool]:
        """Documents the viewer may change, delete or watch: own ones, or any for an admin."""
        return true() if viewer.is_admin else Document.owner_id == viewer.id

    def _select(self, condition: ColumnElement[bool]) -> Select[Document]:
        return select(Document).options(selectinload(Document.owner)).where(condition)

    async def get_visible(self, viewer: User, document_id: uuid.UUID) -> Document | None:
        stmt = self._select(self.readable_by(viewer)).where(Document.id == document_id)
        return await self.session.scalar(stmt)

    async def get_managed(
        self, viewer: User, document_id: uuid.UUID, *, for_update: bool = False
    ) -> Document | None:
        stmt = self._select(self.managed_by(viewer)).where(Document.id == document_id)
        if for_update:
            stmt = stmt.with_for_update(of=Document)
        return await self.session.scalar(stmt)

    async def get_many_visible(
        self, viewer: User, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Document]:
        rows = await self.session.scalars(
            self._select(self.readable_by(viewer)).where(Document.id.in_(ids))
        )
        return {row.id: row for row in rows}

    async def get_for_ingestion(
        self, document_id: uuid.UUID, *, for_update: bool = False
    ) -> Document | None:
        """Unscoped: only the ingestion job, which acts for the owner, reads documents this way."""
        stmt = select(Document).where(Document.id == document_id)
        if for_update:
            stmt = stmt.with_for_update()
        return await self.session.scalar(stmt)

    async def claim_for_ingestion(self, document_id: uuid.UUID) -> Claim | DocumentStatus | None:
        """Mark the document PROCESSING and read its uploaded bytes, in one statement.

        Returns the claim; the status when the document is READY already (a duplicate job,
        left as it is); None when the document no longer exists. Unscoped, as
        ``get_for_ingestion``.
        """
        connection = await self.session.connection()
        row = (await connection.execute(_CLAIM, {"document_id": document_id})).one_or_none()
        mark_written(self.session)
        if row is None:
            return await self.session.scalar(
                select(Document.status).where(Document.id == document_id)
            )
        return Claim(StatusChange(*row[:5]), title=row[5], mime_type=row[6], data=row[7])

    async def find_duplicate(self, owner_id: uuid.UUID, sha256: str) -> uuid.UUID | None:
        return await self.session.scalar(
            select(Document.id).where(
                Document.owner_id == owner_id, Document.content_sha256 == sha256
            )
        )

    async def add(self, document: Document, data: bytes) -> bool:
        """Insert a new document (its id already set), its uploaded bytes and its ingestion
        job, in one statement; then fill in what the database computed (the timestamps).

        False, with nothing written, when the owner already has a document with the same
        content (also one that a concurrent upload has just committed).
        """
        parameters = {
            f"new_{column}": getattr(document, column) for column in _NEW_DOCUMENT_COLUMNS
        }
        parameters.update(job_parameters(document.id), data=data)
        row = (await (await self.session.connection()).execute(_ADD, parameters)).one_or_none()
        if row is None:
            return False
        mark_written(self.session)
        set_committed_value(document, "created_at", row[0])
        set_committed_value(document, "updated_at", row[1])
        return True

    async def list_visible(
        self,
        viewer: User,
        request: PageRequest,
        *,
        status: DocumentStatus | None = None,
        visibility: Visibility | None = None,
        search: str | None = None,
    ) -> Page[Document]:
        stmt = self._select(self.readable_by(viewer))
        if status is not None:
            stmt = stmt.where(Document.status == status)
        if visibility is not None:
            stmt = stmt.where(Document.visibility == visibility)
        if search:
            await plan_for_the_term(self.session)
            stmt = stmt.where(contains((Document.title, Document.filename), search))
        return await paginate(
            self.session,
            stmt,
            keys=[Document.created_at, Document.id],
            cursor_of=lambda d: (d.created_at, d.id),
            request=request,
            descending=True,
        )

    async def delete(self, document: Document) -> None:
        # Chunks and the stored bytes go with it (ON DELETE CASCADE).
        await self.session.execute(delete(Document).where(Document.id == document.id))

    async def set_status(
        self,
        document: Document,
        status: DocumentStatus,
        *,
        error: str | None = None,
        chunk_count: int | None = None,
    ) -> Document:
        document.status = status
        document.error = error
        if chunk_count is not None:
            document.chunk_count = chunk_count
        document.updated_at = func.now()
        await self.session.flush()  # UPDATE ... RETURNING updated_at (eager defaults)
        return document

    async def store_chunks(
        self, document_id: uuid.UUID, payload: bytes, count: int
    ) -> StatusChange | None:
        """Mark the document READY with ``count`` chunks, whose rows ``payload`` holds (see
        db/chunk_copy.py), in place of the chunks it had; None when it no longer exists.

        One statement locks and marks the document and deletes its old chunks (in that order:
        the lock comes first, as for every other writer of a document); then one binary
        COPY. Both are in the session's transaction: the chunks land with the status or not
        at all.
        """
        connection = await self.session.connection()
        parameters = {"document_id": document_id, "chunk_count": count}
        row = (await connection.execute(_MARK_READY, parameters)).one_or_none()
        mark_written(self.session)
        if row is None:
            return None
        if count:
            raw = await connection.get_raw_connection()
            driver: asyncpg.Connection = raw.driver_connection
            await driver.copy_to_table(
                Chunk.__tablename__,
                # A memoryview: asyncpg sends a buffer as it is (bytes would be taken for a path).
                source=memoryview(payload),
                columns=CHUNK_COPY_COLUMNS,
                format="binary",
            )
        return StatusChange(*row)

    @staticmethod
    def chunk_page_key(document_id: uuid.UUID, request: PageRequest) -> ParentPageKey:
        """Raises ``InvalidCursor`` for anything that is not a cursor of a chunk list."""
        return parent_page_key(document_id, request, _CHUNK_PAGE_KEYS)

    async def chunk_pages(self, viewer: User, keys: Sequence[ParentPageKey]) -> list[Page[Chunk]]:
        """Documents' chunks in order, a page per key; none of a document the viewer may not
        look at. The first pages of all the documents are one statement."""
        stmt = (
            select(Chunk)
            .join(Document, Document.id == Chunk.document_id)
            .where(self.readable_by(viewer))
        )
        return await paginate_parents(
            self.session,
            stmt,
            parent=Chunk.document_id,
            keys=_CHUNK_PAGE_KEYS,
            cursor_of=lambda c: (c.ordinal, c.id),
            requests=keys,
            # Search columns: large, and no part of a chunk as the API shows it.
            deferred=("embedding", "tsv"),
        )

    async def unfinished_ids(self) -> list[uuid.UUID]:
        rows = await self.session.scalars(
            select(Document.id).where(Document.status.in_(UNFINISHED_STATUSES))
        )
        return list(rows)


async def embedding_column_dimensions(session: AsyncSession) -> int | None:
    """The dimension of ``chunks.embedding`` as the database has it (None if unconstrained)."""
    typmod = await session.scalar(
        text(
            "SELECT atttypmod FROM pg_attribute "
            "WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'"
        )
    )
    return int(typmod) if typmod is not None and typmod > 0 else None


@dataclass(frozen=True)
class ChunkForEmbedding:
    id: uuid.UUID
    title: str
    heading_path: list[str]
    content: str


@dataclass(frozen=True)
class HnswOptions:
    """Build parameters of the HNSW index (those the migrations build it with).

    ``m``: links per node; ``ef_construction``: candidate list while inserting. Higher values
    give better recall at the same ``ef_search``, for a slower build and slower inserts.
    With pgvector's own defaults, 16 and 64, recall stays under 0.9 on hard data (README,
    Performance).
    """

    m: int = 24
    ef_construction: int = 96

    def __post_init__(self) -> None:
        # pgvector's own bounds, checked here so the message names the options.
        if not 2 <= self.m <= 100:
            raise ValueError("m must be between 2 and 100")
        if not 4 <= self.ef_construction <= 1000:
            raise ValueError("ef_construction must be between 4 and 1000")
        if self.ef_construction < 2 * self.m:
            raise ValueError("ef_construction must be at least twice m")


PGVECTOR_DEFAULTS = HnswOptions(m=16, ef_construction=64)

_MEMORY_UNITS_KB = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}


@dataclass(frozen=True)
class IndexBuild:
    """What one HNSW build may use: ``memory`` (``maintenance_work_mem``, a PostgreSQL size
    such as ``4GB``) and ``workers`` (``max_parallel_maintenance_workers``; None leaves the
    server's own, 2 unless configured).

    The graph is built in that memory; once it outgrows it, the build goes on far slower
    (measured: 100,000 chunks took ~500 s with 64 MB, ~150 s with 1 GB). The graph takes about
    2.5 kB per chunk of 384 dimensions with m 24 (64 MB held 26,762 chunks), so 1 GB holds
    about 400,000 chunks and a million want about 2.5 GB.
    """

    memory: str = "1GB"
    workers: int | None = None

    def __post_init__(self) -> None:
        # PostgreSQL's own bounds, checked here so the message names the options and no
        # build starts with a value the server would refuse halfway.
        number, unit = self.memory[:-2], self.memory[-2:]
        if not number.isdigit() or unit not in _MEMORY_UNITS_KB:
            raise ValueError("build memory must be a whole number of kB, MB, GB or TB, e.g. 4GB")
        if not 1024 <= int(number) * _MEMORY_UNITS_KB[unit] <= 2_147_483_647:
            raise ValueError("build memory must be between 1MB and 2TB")
        if self.workers is not None and not 0 <= self.workers <= 1024:
            raise ValueError("build workers must be between 0 and 1024")


class VectorIndexRepository:
    """Schema-level operations on the embedding column, for `ragstream reindex`."""

    INDEX = "ix_chunks_embedding_hnsw"
    _NEW_INDEX = "ix_chunks_embedding_hnsw_new"

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count_chunks(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(Chunk)) or 0)

    async def resize(self, dimensions: int) -> None:
        """Drop the index and every vector, and give the column its new size."""
        await self.drop_index()
        await self.session.execute(
            text(
                "ALTER TABLE chunks ALTER COLUMN embedding "
                f"TYPE vector({int(dimensions)}) USING NULL"
            )
        )

    async def drop_index(self) -> None:
        await self.session.execute(text(f"DROP INDEX IF EXISTS {self.INDEX}"))

    async def index_options(self) -> HnswOptions | None:
        """The build parameters of the index; None if there is no index."""
        row = (
            await self.session.execute(
                text(
                    "SELECT coalesce(c.reloptions, '{}') FROM pg_class c"
                    " WHERE c.relname = :name AND c.relkind = 'i'"
                    " AND c.relnamespace = current_schema()::regnamespace"
                ),
                {"name": self.INDEX},
            )
        ).first()
        if row is None:
            return None
        given = dict(option.split("=", 1) for option in row[0])
        # An option missing from the index was pgvector's default when it was built.
        return HnswOptions(
            m=int(given.get("m", PGVECTOR_DEFAULTS.m)),
            ef_construction=int(given.get("ef_construction", PGVECTOR_DEFAULTS.ef_construction)),
        )

    async def replace_index(self, options: HnswOptions, build: IndexBuild) -> None:
        """Build the index with ``options`` under a temporary name, then drop the old one and
        rename: readers keep the old index until the transaction commits.

        ``build``'s memory and workers hold for this transaction only.
        """
        await self.session.execute(
            text("SELECT set_config('maintenance_work_mem', :memory, true)"),
            {"memory": build.memory},
        )
        if build.workers is not None:
            await self.session.execute(
                text("SELECT set_config('max_parallel_maintenance_workers', :workers, true)"),
                {"workers": str(build.workers)},
            )
        await self.session.execute(text(f"DROP INDEX IF EXISTS {self._NEW_INDEX}"))
        await self.session.execute(
            text(
                f"CREATE INDEX {self._NEW_INDEX} ON chunks"
                " USING hnsw (embedding vector_cosine_ops)"
                f" WITH (m = {int(options.m)}, ef_construction = {int(options.ef_construction)})"
            )
        )
        await self.drop_index()
        await self.session.execute(text(f"ALTER INDEX {self._NEW_INDEX} RENAME TO {self.INDEX}"))

    async def batch_after(self, after: uuid.UUID | None, limit: int) -> list[ChunkForEmbedding]:
        stmt = (
            select(Chunk.id, Document.title, Chunk.heading_path, Chunk.content)
            .join(Document, Document.id == Chunk.document_id)
            .order_by(Chunk.id)
            .limit(limit)
        )
        if after is not None:
            stmt = stmt.where(Chunk.id > after)
        rows = await self.session.execute(stmt)
        return [ChunkForEmbedding(r[0], r[1], list(r[2]), r[3]) for r in rows]

    async def set_embeddings(self, pairs: Sequence[tuple[uuid.UUID, Sequence[float]]]) -> None:
        if pairs:
            await self.session.execute(
                update(Chunk),
                [{"id": chunk_id, "embedding": list(vector)} for chunk_id, vector in pairs],
            )
