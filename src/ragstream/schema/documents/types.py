from __future__ import annotations

import uuid
from datetime import datetime

import strawberry

from ragstream.db.models.documents import Chunk as ChunkRow
from ragstream.db.models.documents import Document as DocumentRow
from ragstream.domain.documents import service
from ragstream.domain.documents.enums import DocumentStatus, Visibility
from ragstream.domain.errors import NotFound
from ragstream.domain.retrieval.service import SearchResult
from ragstream.schema.context import Info
from ragstream.schema.enums import api_enum
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection
from ragstream.schema.users.types import User, to_user

api_enum(
    Visibility,
    description="Who may read a document.",
    values={
        Visibility.PRIVATE: "Only the owner (and admins).",
        Visibility.SHARED: "Every user; only admins may share documents.",
    },
)
api_enum(
    DocumentStatus,
    description="Where a document is in ingestion.",
    values={
        DocumentStatus.PENDING: "Queued for ingestion.",
        DocumentStatus.PROCESSING: "Being parsed, chunked and embedded.",
        DocumentStatus.READY: "Searchable.",
        DocumentStatus.FAILED: "Ingestion gave up; `error` says why. Reprocess to try again.",
    },
)


@strawberry.type(description="A passage of a document: the unit retrieval returns.")
class Chunk:
    id: strawberry.ID = strawberry.field(description="UUID of the chunk.")
    ordinal: int = strawberry.field(description="Position in its document, from 0.")
    content: str = strawberry.field(description="The passage text.")
    page: int | None = strawberry.field(description="PDF page it starts on (from 1); null else.")
    heading_path: list[str] = strawberry.field(
        description="Headings of the section it belongs to, outermost first."
    )
    token_count: int = strawberry.field(description="Estimated size in tokens.")


def to_chunk(row: ChunkRow) -> Chunk:
    return Chunk(
        id=strawberry.ID(str(row.id)),
        ordinal=row.ordinal,
        content=row.content,
        page=row.page,
        heading_path=list(row.heading_path),
        token_count=row.token_count,
    )


async def resolve_owner(root: Document, info: Info) -> User | None:
    # The users loader reads only accounts the viewer may see (itself; any for an admin).
    try:
        return to_user(await info.context.loaders.users.load(root.owner_id))
    except NotFound:
        return None


@strawberry.type(description="A document of the knowledge base.")
class Document:
    id: strawberry.ID = strawberry.field(description="UUID of the document.")
    owner: User | None = strawberry.field(
        resolver=resolve_owner,
        description="Who uploaded it; null unless you are that user or an admin (readers of a "
        "shared document do not learn who shared it).",
    )
    owner_id: strawberry.Private[uuid.UUID]
    title: str = strawberry.field(description="Title shown in lists and citations.")
    filename: str = strawberry.field(description="File name as uploaded (no path).")
    mime_type: str = strawberry.field(
        description="Detected type: text/plain, text/markdown, text/html or application/pdf."
    )
    size_bytes: int = strawberry.field(description="Size of the uploaded content in bytes.")
    visibility: Visibility = strawberry.field(description="PRIVATE or SHARED.")
    status: DocumentStatus = strawberry.field(description="Ingestion status.")
    error: str | None = strawberry.field(description="Why ingestion failed; null unless FAILED.")
    chunk_count: int = strawberry.field(description="Number of chunks once READY.")
    created_at: datetime = strawberry.field(description="When it was uploaded.")
    updated_at: datetime = strawberry.field(description="When its status last changed.")

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry leaves it untyped
        description="The document's chunks in order (what search can return)."
    )
    async def chunks(
        self,
        info: Info,
        first: FirstArg = None,
        after: AfterArg = None,
    ) -> Connection[Chunk]:
        # Batched with the other documents of the response; see schema/loaders.py.
        key = service.chunk_page_key(uuid.UUID(str(self.id)), first=first, after=after)
        page = await info.context.loaders.chunk_pages.load(key)
        return to_connection(page, to_chunk)


def to_document(row: DocumentRow) -> Document:
    return Document(
        id=strawberry.ID(str(row.id)),
        owner_id=row.owner_id,
        title=row.title,
        filename=row.filename,
        mime_type=row.mime_type,
        size_bytes=row.size_bytes,
        visibility=Visibility(row.visibility),
        status=DocumentStatus(row.status),
        error=row.error,
        chunk_count=row.chunk_count,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@strawberry.type(description="One search result: a chunk, its document and its relevance.")
class SearchHit:
    chunk: Chunk = strawberry.field(description="The matching passage.")
    document: Document = strawberry.field(description="The document it comes from.")
    score: float = strawberry.field(
        description="Reciprocal-rank-fusion score of the vector and full-text rankings; "
        "higher is more relevant."
    )


def to_search_hit(result: SearchResult) -> SearchHit:
    # A search result is a chunk as retrieval loaded it (with its document), without a chunk
    # row to map.
    return SearchHit(
        chunk=Chunk(
            id=strawberry.ID(str(result.chunk_id)),
            ordinal=result.ordinal,
            content=result.content,
            page=result.page,
            heading_path=list(result.heading_path),
            token_count=result.token_count,
        ),
        document=to_document(result.document),
        score=result.score,
    )


@strawberry.input(description="A document from text instead of a file.")
class CreateDocumentInput:
    title: str = strawberry.field(description="Title, 1 to 200 characters.")
    content: str = strawberry.field(description="The text itself.")
    mime_type: str = strawberry.field(
        description="How to read the text: text/plain, text/markdown or text/html."
    )
    visibility: Visibility | None = strawberry.field(
        default=Visibility.PRIVATE, description="SHARED is for admins only (default PRIVATE)."
    )


@strawberry.input(description="Narrows a document list; omitted fields do not filter.")
class DocumentFilter:
    status: DocumentStatus | None = strawberry.field(default=None, description="Only this status.")
    visibility: Visibility | None = strawberry.field(
        default=None, description="Only this visibility."
    )
    search: str | None = strawberry.field(
        default=None, description="Case-insensitive match on title or file name."
    )
