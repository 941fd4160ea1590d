from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import ColumnElement, exists, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.list_search import contains, plan_for_the_term
from ragstream.db.models import RefreshToken, User
from ragstream.db.pagination import Page, PageRequest, paginate


def readable_by(viewer: User) -> ColumnElement[bool]:
    """An account sees itself; administrators see every account."""
    if viewer.role == "ADMIN":
        return true()
    return User.id == viewer.id


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def get_signed_in(self, user_id: uuid.UUID, session_id: uuid.UUID) -> User | None:
        """The active account, only while its sign-in session (refresh-token family) is live.

        One statement: revoking the family (sign-out, reuse detection, password change,
        deactivation) stops the session's access tokens on their next request.
        """
        live_session = exists().where(
            RefreshToken.family_id == session_id,
            RefreshToken.user_id == User.id,
            RefreshToken.revoked_at.is_(None),
        )
        return await self.session.scalar(
            select(User).where(User.id == user_id, User.is_active.is_(True), live_session)
        )

    async def get_many(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, User]:
        rows = await self.session.scalars(select(User).where(User.id.in_(ids)))
        return {user.id: user for user in rows}

    async def get_many_readable(
        self, viewer: User, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, User]:
        rows = await self.session.scalars(select(User).where(User.id.in_(ids), readable_by(viewer)))
        return {user.id: user for user in rows}

    async def get_by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email))

    async def first_admin(self) -> User | None:
        """The oldest active admin (the default owner of bulk imports)."""
        return await self.session.scalar(
            select(User)
            .where(User.role == "ADMIN", User.is_active.is_(True))
            .order_by(User.created_at, User.id)
            .limit(1)
        )

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        await self.session.refresh(user)
        return user

    async def list(self, request: PageRequest, search: str | None = None) -> Page[User]:
        stmt = select(User)
        if search:
            await plan_for_the_term(self.session)
            stmt = stmt.where(contains((User.email, User.display_name), search))
        return await paginate(
            self.session,
            stmt,
            keys=[User.created_at, User.id],
            cursor_of=lambda u: (u.created_at, u.id),
            request=request,
        )
