"""Conversations. Reads go through `readable_by`, writes through `owned_by`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models.chat import Conversation
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import Page, PageRequest, paginate
from ragstream.db.repositories import evaluations


def readable_by(viewer: User) -> Select[Conversation]:
    """The owner reads their conversations; an admin reads everyone's."""
    stmt = select(Conversation)
    if viewer.role != "ADMIN":
        stmt = stmt.where(Conversation.owner_id == viewer.id)
    return stmt


def owned_by(viewer: User) -> Select[Conversation]:
    """Changes are the owner's alone, admins included."""
    return select(Conversation).where(Conversation.owner_id == viewer.id)


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_readable(self, viewer: User, conversation_id: uuid.UUID) -> Conversation | None:
        return await self.session.scalar(
            readable_by(viewer).where(Conversation.id == conversation_id)
        )

    async def get_owned(self, viewer: User, conversation_id: uuid.UUID) -> Conversation | None:
        return await self.session.scalar(owned_by(viewer).where(Conversation.id == conversation_id))

    async def get_many_readable(
        self, viewer: User, ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, Conversation]:
        rows = await self.session.scalars(readable_by(viewer).where(Conversation.id.in_(ids)))
        return {row.id: row for row in rows}

    async def add(self, conversation: Conversation) -> Conversation:
        self.session.add(conversation)
        await self.session.flush()
        await self.session.refresh(conversation)
        return conversation

    async def list_owned(
        self, viewer: User, request: PageRequest, *, evaluation_id: uuid.UUID | None = None
    ) -> Page[Conversation]:
        """The viewer's own conversations, newest first."""
        stmt = owned_by(viewer)
        if evaluation_id is not None:
            stmt = stmt.where(Conversation.evaluation_id == evaluation_id)
        return await paginate(
            self.session,
            stmt,
            keys=[Conversation.created_at, Conversation.id],
            cursor_of=lambda c: (c.created_at, c.id),
            request=request,
            descending=True,
        )

    async def delete_owned(self, viewer: User, conversation_id: uuid.UUID) -> bool:
        """Messages and their sources go with it (ON DELETE CASCADE)."""
        result = await self.session.execute(
            delete(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner_id == viewer.id)
            .returning(Conversation.id)
        )
        return result.scalar_one_or_none() is not None

    async def linked_evaluations(
        self, viewer: User, evaluation_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, Evaluation]:
        """Evaluations linked to conversations, as far as the viewer may read them."""
        rows = await self.session.scalars(
            select(Evaluation).where(
                Evaluation.id.in_(evaluation_ids), evaluations.readable_by(viewer)
            )
        )
        return {row.id: row for row in rows}

    async def touch(self, conversation_id: uuid.UUID) -> None:
        """Bump updated_at so a conversation list can show recent activity."""
        await self.session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id)
            .values(updated_at=func.now())
        )
