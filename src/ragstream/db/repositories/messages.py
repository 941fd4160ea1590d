"""Messages and their sources. Readability follows the conversation a message belongs to."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from ragstream.db.models.chat import Message, MessageSource
from ragstream.db.models.documents import Chunk, Document
from ragstream.db.models.users import User
from ragstream.db.pagination import (
    Page,
    PageRequest,
    ParentPageKey,
    paginate_parents,
    parent_page_key,
)
from ragstream.db.repositories import documents

# First key of the two-key advisory locks taken per user by chat ("ch").
_CHAT_LOCK_SPACE = 0x6368

# A conversation's messages in the order they were written (the cursor of Conversation.messages).
_PAGE_KEYS = (Message.created_at, Message.id)


def readable_by(viewer: User) -> Select[Message]:
    """Messages of conversations the viewer may read (own; everyone's for an admin)."""
    stmt = select(Message)
    if viewer.role != "ADMIN":
        stmt = stmt.where(Message.owner_id == viewer.id)
    return stmt


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_readable(self, viewer: User, message_id: uuid.UUID) -> Message | None:
        return await self.session.scalar(readable_by(viewer).where(Message.id == message_id))

    async def get_owned(self, viewer: User, message_id: uuid.UUID) -> Message | None:
        return await self.session.scalar(
            select(Message).where(Message.id == message_id, Message.owner_id == viewer.id)
        )

    async def get(self, message_id: uuid.UUID) -> Message | None:
        """Unfiltered: for the generation task, which acts for the owner it was started by."""
        return await self.session.get(Message, message_id, populate_existing=True)

    @staticmethod
    def page_key(conversation_id: uuid.UUID, request: PageRequest) -> ParentPageKey:
        """Raises ``InvalidCursor`` for anything that is not a cursor of a message list."""
        return parent_page_key(conversation_id, request, _PAGE_KEYS)

    async def pages_readable(
        self, viewer: User, keys: Sequence[ParentPageKey]
    ) -> list[Page[Message]]:
        """Conversations' messages in the order they were written, a page per key.

        The first pages of all the conversations are one statement (see `paginate_parents`).
        """
        return await paginate_parents(
            self.session,
            readable_by(viewer),
            parent=Message.conversation_id,
            keys=_PAGE_KEYS,
            cursor_of=lambda m: (m.created_at, m.id),
            requests=keys,
        )

    async def recent(
        self, conversation_id: uuid.UUID, *, before: datetime, limit: int
    ) -> list[Message]:
        """The latest ``limit`` messages written before ``before``, oldest first."""
        rows = await self.session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id, Message.created_at < before)
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
        return list(reversed(rows.all()))

    async def add(self, message: Message) -> Message:
        self.session.add(message)
        await self.session.flush()
        await self.session.refresh(message)
        return message

    async def sources_for(
        self, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[MessageSource]]:
        result: dict[uuid.UUID, list[MessageSource]] = defaultdict(list)
        if not message_ids:
            return result
        rows = await self.session.scalars(
            select(MessageSource)
            .where(MessageSource.message_id.in_(message_ids))
            .order_by(MessageSource.message_id, MessageSource.index)
        )
        for row in rows:
            result[row.message_id].append(row)
        return result

    async def add_sources(self, sources: Sequence[MessageSource]) -> None:
        self.session.add_all(sources)
        await self.session.flush()

    async def save_partial(self, contents: Sequence[tuple[uuid.UUID, str]]) -> None:
        """Write the text streamed so far for many running answers in one statement."""
        if not contents:
            return
        await self.session.execute(
            text(
                "UPDATE messages AS m SET content = u.content, updated_at = now() "
                "FROM unnest(CAST(:ids AS uuid[]), CAST(:contents AS text[])) AS u(id, content) "
                "WHERE m.id = u.id AND m.status = 'STREAMING'"
            ),
            {"ids": [i for i, _ in contents], "contents": [c for _, c in contents]},
        )

    async def finish(
        self,
        message_id: uuid.UUID,
        *,
        status: str,
        content: str,
        model: str | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        error_code: str | None,
    ) -> Message | None:
        """Store the final state once; a message that already left STREAMING is not touched."""
        result = await self.session.scalars(
            update(Message)
            .where(Message.id == message_id, Message.status == "STREAMING")
            .values(
                status=status,
                content=content,
                model=model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                error_code=error_code,
                completed_at=func.now(),
                updated_at=func.now(),
            )
            .returning(Message),
            execution_options={"populate_existing": True},
        )
        return result.one_or_none()

    async def interrupt_streaming(self, message_ids: Sequence[uuid.UUID] | None = None) -> int:
        """Mark running answers INTERRUPTED (all of them, or the given ones), text kept."""
        stmt = (
            update(Message)
            .where(Message.status == "STREAMING")
            .values(
                status="INTERRUPTED",
                error_code="INTERRUPTED",
                completed_at=func.now(),
                updated_at=func.now(),
            )
        )
        if message_ids is not None:
            stmt = stmt.where(Message.id.in_(message_ids))
        result = await self.session.execute(stmt.returning(Message.id))
        return len(result.all())

    async def lock_owner(self, owner_id: uuid.UUID) -> None:
        """Serialise one user's sends until the transaction ends, so limits are exact."""
        await self.session.execute(
            text("SELECT pg_advisory_xact_lock(:space, hashtext(:owner))"),
            {"space": _CHAT_LOCK_SPACE, "owner": str(owner_id)},
        )

    async def count_streaming(self, owner_id: uuid.UUID) -> int:
        count = await self.session.scalar(
            select(func.count())
            .select_from(Message)
            .where(Message.owner_id == owner_id, Message.status == "STREAMING")
        )
        return int(count or 0)

    async def cited_chunks(
        self, viewer: User, chunk_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Chunk]:
        """Cited chunks the viewer may still look at (their document is visible to them)."""
        rows = await self.session.scalars(
            select(Chunk)
            .join(Document, Document.id == Chunk.document_id)
            .where(Chunk.id.in_(chunk_ids), documents.visible_to(viewer))
            .options(defer(Chunk.embedding), defer(Chunk.tsv))
        )
        return {row.id: row for row in rows}

    async def streaming_in_conversation(self, conversation_id: uuid.UUID) -> list[uuid.UUID]:
        rows = await self.session.scalars(
            select(Message.id).where(
                Message.conversation_id == conversation_id, Message.status == "STREAMING"
            )
        )
        return list(rows)
