"""Knowledge base operations for a signed-in viewer. Services flush; the caller commits."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from ragstream.db.models.documents import Chunk, Document
from ragstream.db.models.users import User
from ragstream.db.pagination import Page, ParentPageKey
from ragstream.db.repositories.documents import DocumentRepository
from ragstream.db.repositories.jobs import JobRepository
from ragstream.domain.documents.enums import UNFINISHED_STATUSES, DocumentStatus, Visibility
from ragstream.domain.documents.formats import (
    TEXT_TYPES,
    check_text,
    clean_filename,
    detect_type,
    filename_for,
    with_extension,
)
from ragstream.domain.errors import Conflict, Forbidden, InvalidInput, not_found
from ragstream.domain.flags.features import UploadPolicy
from ragstream.domain.pagination import cursor_errors, page_request

MAX_TITLE = 200


def _title(title: str | None, fallback: str) -> str:
    title = " ".join((title or "").split()) or " ".join(fallback.split())
    if not 1 <= len(title) <= MAX_TITLE:
        raise InvalidInput(f"title must be 1 to {MAX_TITLE} characters", field="title")
    return title


def _check_visibility(viewer: User, visibility: Visibility) -> None:
    if visibility == Visibility.SHARED and not viewer.is_admin:
        raise Forbidden("only administrators may share documents with everyone")


def _check_size(size: int, max_bytes: int, field: str) -> None:
    if size > max_bytes:
        raise InvalidInput(f"the document is larger than {max_bytes} bytes", field=field)
    if size == 0:
        raise InvalidInput("the document is empty", field=field)


async def _create(
    session: AsyncSession,
    viewer: User,
    *,
    title: str,
    filename: str,
    mime_type: str,
    data: bytes,
    visibility: Visibility,
) -> Document:
    repo = DocumentRepository(session)
    digest = hashlib.sha256(data).hexdigest()
    document = Document(
        id=uuid.uuid4(),
        owner_id=viewer.id,
        title=title,
        filename=filename,
        mime_type=mime_type,
        size_bytes=len(data),
        content_sha256=digest,
        visibility=visibility,
        status=DocumentStatus.PENDING,
        error=None,
        chunk_count=0,
    )
    # The document, its bytes and its ingestion job: one statement.
    if not await repo.add(document, data):
        existing = await repo.find_duplicate(viewer.id, digest)
        raise Conflict(
            f"you already uploaded this content as document {existing}",
            extensions={"existingId": str(existing)},
        )
    set_committed_value(document, "owner", viewer)  # as loaded: no query for who we know
    return document


async def upload_document(
    session: AsyncSession,
    viewer: User,
    *,
    filename: str | None,
    data: bytes,
    title: str | None,
    visibility: Visibility,
    policy: UploadPolicy,
) -> Document:
    """Store an uploaded file and queue its ingestion; the document starts PENDING.

    The viewer's `uploads` feature decides whether it may, how large the file may be and
    which types are allowed. ``data`` may be one byte longer than the allowed size (the
    caller reads no further).
    """
    policy.require_enabled()
    _check_visibility(viewer, visibility)
    name = clean_filename(filename)
    _check_size(len(data), policy.max_bytes, "file")
    mime_type = detect_type(name, data)
    policy.check_type(mime_type, "file")
    return await _create(
        session,
        viewer,
        title=_title(title, name.rsplit(".", 1)[0]),
        filename=with_extension(name, mime_type),
        mime_type=mime_type,
        data=data,
        visibility=visibility,
    )


async def create_document(
    session: AsyncSession,
    viewer: User,
    *,
    title: str,
    content: str,
    mime_type: str,
    visibility: Visibility,
    policy: UploadPolicy,
) -> Document:
    """A document from text typed or pasted by the client (plain text, Markdown or HTML).

    Adds to the knowledge base as an upload does, so the `uploads` feature governs it too.
    """
    policy.require_enabled()
    _check_visibility(viewer, visibility)
    mime_type = mime_type.strip().lower()
    if mime_type not in TEXT_TYPES:
        raise InvalidInput(
            "mimeType must be text/plain, text/markdown or text/html", field="mimeType"
        )
    policy.check_type(mime_type, "mimeType")
    clean_title = _title(title, "")
    data = content.encode("utf-8")
    _check_size(len(data), policy.max_bytes, "content")
    if not content.strip():
        raise InvalidInput("the document is empty", field="content")
    try:
        check_text(data)
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="content") from None
    return await _create(
        session,
        viewer,
        title=clean_title,
        filename=filename_for(clean_title, mime_type),
        mime_type=mime_type,
        data=data,
        visibility=visibility,
    )


async def get_document(session: AsyncSession, viewer: User, document_id: uuid.UUID) -> Document:
    document = await DocumentRepository(session).get_visible(viewer, document_id)
    if document is None:
        raise not_found("document")
    return document


async def get_watchable_document(
    session: AsyncSession, viewer: User, document_id: uuid.UUID
) -> Document:
    """For status events: the owner's or, for an admin, any document."""
    document = await DocumentRepository(session).get_managed(viewer, document_id)
    if document is None:
        raise not_found("document")
    return document


async def list_documents(
    session: AsyncSession,
    viewer: User,
    *,
    first: int | None,
    after: str | None,
    status: DocumentStatus | None = None,
    visibility: Visibility | None = None,
    search: str | None = None,
) -> Page[Document]:
    with cursor_errors():
        return await DocumentRepository(session).list_visible(
            viewer,
            page_request(first, after),
            status=status,
            visibility=visibility,
            search=(search or "").strip() or None,
        )


def chunk_page_key(
    document_id: uuid.UUID, *, first: int | None, after: str | None
) -> ParentPageKey:
    """Validate ``Document.chunks`` arguments up front, so a batch never fails on one bad key
    (and a refused page size reads nothing)."""
    request = page_request(first, after)
    with cursor_errors():
        return DocumentRepository.chunk_page_key(document_id, request)


async def chunk_pages(
    session: AsyncSession, viewer: User, keys: Sequence[ParentPageKey]
) -> list[Page[Chunk]]:
    """Documents' chunks in order, for many pages at once (the first pages in one query)."""
    return await DocumentRepository(session).chunk_pages(viewer, keys)


async def _get_managed_for_update(
    session: AsyncSession, viewer: User, document_id: uuid.UUID
) -> Document:
    repo = DocumentRepository(session)
    document = await repo.get_managed(viewer, document_id, for_update=True)
    if document is None:
        if await repo.get_visible(viewer, document_id) is not None:
            raise Forbidden("only the owner or an administrator may change this document")
        raise not_found("document")
    return document


async def delete_document(session: AsyncSession, viewer: User, document_id: uuid.UUID) -> uuid.UUID:
    """Delete a document with its chunks and stored file; a waiting job is cancelled."""
    document = await _get_managed_for_update(session, viewer, document_id)
    await JobRepository(session).cancel_waiting(document.id)
    await DocumentRepository(session).delete(document)
    return document_id


async def reprocess_document(
    session: AsyncSession, viewer: User, document_id: uuid.UUID
) -> tuple[Document, bool]:
    """Run ingestion again. Idempotent: a document already queued or in progress is left be.

    Returns the document and whether its status changed (so the caller publishes an event).
    """
    document = await _get_managed_for_update(session, viewer, document_id)
    if document.status in UNFINISHED_STATUSES:
        return document, False
    repo = DocumentRepository(session)
    await repo.set_status(document, DocumentStatus.PENDING)
    await JobRepository(session).enqueue_ingestion(document.id)
    return document, True


async def get_documents(
    session: AsyncSession, viewer: User, document_ids: list[uuid.UUID]
) -> dict[uuid.UUID, Document]:
    """Visible documents by id, in one query (for search hits and citations)."""
    return await DocumentRepository(session).get_many_visible(viewer, document_ids)
