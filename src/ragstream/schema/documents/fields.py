"""Root fields of the knowledge base."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import strawberry

from ragstream.resolvers import documents as resolvers
from ragstream.schema.documents.types import Document, SearchHit
from ragstream.schema.pagination import Connection
from ragstream.schema.permissions import signed_in


@strawberry.type
class DocumentQueries:
    document: Document = strawberry.field(
        resolver=resolvers.document,
        description="One document you may read: your own, a shared one, or any for an admin.",
        permission_classes=signed_in,
    )
    documents: Connection[Document] = strawberry.field(
        resolver=resolvers.documents,
        description="Documents you may read, newest first.",
        permission_classes=signed_in,
    )
    search: list[SearchHit] = strawberry.field(
        resolver=resolvers.search,
        description="Hybrid retrieval (vector and full text, fused by reciprocal rank) over "
        "your own and shared documents; best first.",
        permission_classes=signed_in,
    )


@strawberry.type
class DocumentMutations:
    upload_document: Document = strawberry.field(
        resolver=resolvers.upload_document,
        description="Upload a .txt, .md, .html or .pdf file (GraphQL multipart request; send an "
        "Apollo-Require-Preflight header). Returns at once with status PENDING.",
        permission_classes=signed_in,
    )
    create_document: Document = strawberry.field(
        resolver=resolvers.create_document,
        description="Add a document from text. Returns at once with status PENDING.",
        permission_classes=signed_in,
    )
    delete_document: strawberry.ID = strawberry.field(
        resolver=resolvers.delete_document,
        description="Delete a document and its chunks (owner or admin); returns its id.",
        permission_classes=signed_in,
    )
    reprocess_document: Document = strawberry.field(
        resolver=resolvers.reprocess_document,
        description="Ingest a document again (owner or admin). Does nothing while it is "
        "PENDING or PROCESSING.",
        permission_classes=signed_in,
    )


@strawberry.type
class DocumentSubscriptions:
    document_events: AsyncGenerator[Document, None] = strawberry.subscription(
        resolver=resolvers.document_events,
        description="The document now, then again on every status change; completes at READY "
        "or FAILED (owner or admin).",
        permission_classes=signed_in,
    )
