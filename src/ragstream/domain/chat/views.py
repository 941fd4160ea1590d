"""Plain read models of chat data, shared by the service, the stream buffers and the API mapping.

They are built from rows once, so a stream can carry a finished message to every follower
without a database read per follower.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ragstream.db.models.chat import Message, MessageSource


@dataclass(frozen=True)
class SourceView:
    index: int  # the n of "[n]" in the answer
    document_id: uuid.UUID | None  # None once the document was deleted
    chunk_id: uuid.UUID | None
    title: str
    excerpt: str
    page: int | None
    score: float


@dataclass(frozen=True)
class MessageView:
    id: uuid.UUID
    conversation_id: uuid.UUID
    owner_id: uuid.UUID
    role: str
    content: str
    status: str
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    error_code: str | None
    created_at: datetime
    completed_at: datetime | None
    sources: Sequence[SourceView]


@dataclass(frozen=True)
class Ending:
    """How a generation ended: the stored message, and the failure code when it did not complete."""

    message: MessageView
    error_code: str | None = None


def source_view(row: MessageSource) -> SourceView:
    return SourceView(
        index=row.index,
        document_id=row.document_id,
        chunk_id=row.chunk_id,
        title=row.title,
        excerpt=row.excerpt,
        page=row.page,
        score=row.score,
    )


def message_view(row: Message, sources: Sequence[SourceView] = ()) -> MessageView:
    return MessageView(
        id=row.id,
        conversation_id=row.conversation_id,
        owner_id=row.owner_id,
        role=row.role,
        content=row.content,
        status=row.status,
        model=row.model,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        error_code=row.error_code,
        created_at=row.created_at,
        completed_at=row.completed_at,
        sources=tuple(sources),
    )
