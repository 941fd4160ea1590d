from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated, cast

import strawberry
from starlette.datastructures import UploadFile
from strawberry.file_uploads import Upload

from ragstream.db.models.documents import Document as DocumentRow
from ragstream.domain.documents import service
from ragstream.domain.documents.enums import TERMINAL_STATUSES, Visibility
from ragstream.domain.documents.events import (
    apply_snapshot,
    document_topic,
    publish_status,
)
from ragstream.domain.errors import InvalidInput, NotFound
from ragstream.domain.flags.enums import FeatureKey
from ragstream.domain.retrieval.service import SearchTuning
from ragstream.domain.retrieval.service import search as retrieve
from ragstream.observability.search import observe_search
from ragstream.resolvers.ids import parse_id
from ragstream.schema.context import Info
from ragstream.schema.documents.types import (
    CreateDocumentInput,
    Document,
    DocumentFilter,
    SearchHit,
    to_document,
    to_search_hit,
)
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection

DEFAULT_SEARCH_LIMIT = 5


async def document(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the document.")],
) -> Document:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        row = await service.get_document(session, viewer, parse_id(id, "document"))
    return to_document(row)


async def documents(
    info: Info,
    first: FirstArg = None,
    after: AfterArg = None,
    filter: Annotated[
        DocumentFilter | None, strawberry.argument(description="Optional narrowing.")
    ] = None,
) -> Connection[Document]:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        page = await service.list_documents(
            session,
            viewer,
            first=first,
            after=after,
            status=filter.status if filter else None,
            visibility=filter.visibility if filter else None,
            search=filter.search if filter else None,
        )
    return to_connection(page, to_document)


async def search(
    info: Info,
    query: Annotated[str, strawberry.argument(description="What to look for, in plain words.")],
    limit: Annotated[
        int | None, strawberry.argument(description="How many passages, 1 to 50 (default 5).")
    ] = DEFAULT_SEARCH_LIMIT,
) -> list[SearchHit]:
    signed_in = await info.context.signed_in()
    signed_in.flags.features().require(FeatureKey.SEARCH)
    viewer = signed_in.user
    if limit is None:  # an explicit null asks for the default
        limit = DEFAULT_SEARCH_LIMIT
    state = info.context.state
    async with (
        info.context.transaction() as session,
        state.search_sides.session() as side,
    ):
        with observe_search(state.metrics, state.tracing, "search", limit):
            results = await retrieve(
                session,
                viewer,
                query,
                limit,
                state.embedder,
                tuning=SearchTuning.from_settings(state.settings),
                side=side,
            )
    # Each result carries its document, read with the chunk under the same visibility rule.
    return [to_search_hit(result) for result in results]


async def upload_document(
    info: Info,
    file: Annotated[
        Upload, strawberry.argument(description="The file (GraphQL multipart request).")
    ],
    title: Annotated[
        str | None, strawberry.argument(description="Title; defaults to the file name.")
    ] = None,
    visibility: Annotated[
        Visibility | None,
        strawberry.argument(description="SHARED is for admins only (default PRIVATE)."),
    ] = Visibility.PRIVATE,
) -> Document:
    signed_in = await info.context.signed_in()
    viewer = signed_in.user
    policy = signed_in.flags.features().uploads()
    if not isinstance(file, UploadFile):
        raise InvalidInput("file must be an uploaded file", field="file")
    upload = cast("UploadFile", file)
    try:
        # One byte past the limit is enough to know the file is too large.
        data = await upload.read(policy.max_bytes + 1)
    finally:
        await upload.close()
    async with info.context.transaction() as session:
        row = await service.upload_document(
            session,
            viewer,
            filename=upload.filename,
            data=data,
            title=title,
            visibility=visibility or Visibility.PRIVATE,
            policy=policy,
        )
    return to_document(row)


async def create_document(
    info: Info,
    input: Annotated[CreateDocumentInput, strawberry.argument(description="The document.")],
) -> Document:
    signed_in = await info.context.signed_in()
    async with info.context.transaction() as session:
        row = await service.create_document(
            session,
            signed_in.user,
            title=input.title,
            content=input.content,
            mime_type=input.mime_type,
            visibility=input.visibility or Visibility.PRIVATE,
            policy=signed_in.flags.features().uploads(),
        )
    return to_document(row)


async def delete_document(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the document.")],
) -> strawberry.ID:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        deleted = await service.delete_document(session, viewer, parse_id(id, "document"))
    return strawberry.ID(str(deleted))


async def reprocess_document(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the document.")],
) -> Document:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        row, changed = await service.reprocess_document(session, viewer, parse_id(id, "document"))
    if changed:
        await publish_status(info.context.state.broker, row)
    return to_document(row)


def _status_key(row: DocumentRow) -> tuple[str, str | None, int]:
    return (row.status, row.error, row.chunk_count)


async def document_events(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the document.")],
) -> AsyncGenerator[Document, None]:
    viewer = await info.context.viewer()
    document_id = parse_id(id, "document")
    state = info.context.state
    # Subscribed before reading the current state, so no change can fall in between.
    async with state.broker.subscribe(document_topic(document_id)) as events:
        async with state.sessionmaker() as session:
            row = await service.get_watchable_document(session, viewer, document_id)
        yield to_document(row)
        last = _status_key(row)
        while row.status not in TERMINAL_STATUSES:
            try:
                payload = await asyncio.wait_for(
                    anext(events), timeout=state.settings.document_events_poll_seconds
                )
                apply_snapshot(row, payload)
            except TimeoutError:
                # Events from a worker in another process do not reach this broker: look.
                try:
                    async with state.sessionmaker() as session:
                        row = await service.get_watchable_document(session, viewer, document_id)
                except NotFound:
                    return  # deleted meanwhile
            if _status_key(row) != last:
                last = _status_key(row)
                yield to_document(row)
