"""All SQL about accounts and their refresh tokens."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, bindparam, exists, select, true, update

from ragstream.db.list_search import contains, plan_for_the_term
from ragstream.db.models import RefreshToken, User
from ragstream.db.pagination import Page, PageRequest, paginate
from ragstream.db.repositories.base import ReadableRepository, Repository
from ragstream.domain.users.enums import Role

# Built once: the viewer check is the hottest statement of the API. Plain columns (no identity
# map, no loading machinery): `FlagRepository.signed_in_with_flags` adds the account's feature
# flags and builds a detached account from the row.
SIGNED_IN = select(*User.__table__.columns).where(
    User.id == bindparam("user_id"),
    User.is_active.is_(True),
    # The active account, only while its sign-in session (refresh-token family) is live:
    # revoking the family (sign-out, reuse detection, password change, deactivation) stops
    # the session's access tokens on their next request.
    exists().where(
        RefreshToken.family_id == bindparam("session_id"),
        RefreshToken.user_id == User.id,
        RefreshToken.revoked_at.is_(None),
    ),
)


class UserRepository(ReadableRepository[User]):
    model = User

    @classmethod
    def readable_by(cls, viewer: User) -> ColumnElement[bool]:
        """An account sees itself; administrators see every account."""
        return true() if viewer.is_admin else User.id == viewer.id

    async def get_readable(self, viewer: User, user_id: uuid.UUID) -> User | None:
        return await self.session.scalar(self.readable(viewer).where(User.id == user_id))

    async def get(self, user_id: uuid.UUID) -> User | None:
        """Unscoped: for sign-in and token rotation, which act before there is a viewer."""
        return await self.session.get(User, user_id)

    async def get_many_readable(
        self, viewer: User, ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, User]:
        rows = await self.session.scalars(self.readable(viewer).where(User.id.in_(ids)))
        return {user.id: user for user in rows}

    async def get_by_email(self, email: str) -> User | None:
        return await self.session.scalar(select(User).where(User.email == email))

    async def first_admin(self) -> User | None:
        """The oldest active admin (the default owner of bulk imports)."""
        return await self.session.scalar(
            select(User)
            .where(User.role == Role.ADMIN, User.is_active.is_(True))
            .order_by(User.created_at, User.id)
            .limit(1)
        )

    async def add(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        await self.session.refresh(user)
        return user

    async def list(self, request: PageRequest, search: str | None = None) -> Page[User]:
        """Every account (the admin list; the caller checks the role)."""
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


class RefreshTokenRepository(Repository):
    """Sessions are reached by the secret token itself: there is no viewer to scope by."""

    async def add(self, token: RefreshToken) -> RefreshToken:
        self.session.add(token)
        await self.session.flush()
        return token

    async def get_for_update(self, digest: str) -> RefreshToken | None:
        """The token row, locked: two concurrent rotations of one token cannot both succeed."""
        stmt = select(RefreshToken).where(RefreshToken.token_hash == digest).with_for_update()
        return await self.session.scalar(stmt)

    async def revoke_family(self, family_id: uuid.UUID) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )

    async def revoke_all_for_user(
        self, user_id: uuid.UUID, *, keep_family: uuid.UUID | None = None
    ) -> None:
        stmt = update(RefreshToken).where(
            RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
        )
        if keep_family is not None:
            stmt = stmt.where(RefreshToken.family_id != keep_family)
        await self.session.execute(stmt.values(revoked_at=datetime.now(UTC)))
