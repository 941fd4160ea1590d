"""Reading and administering accounts. Callers pass the signed-in viewer explicitly."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import User
from ragstream.db.pagination import Page
from ragstream.db.repositories.users import RefreshTokenRepository, UserRepository
from ragstream.domain.errors import Forbidden, InvalidInput, not_found
from ragstream.domain.pagination import cursor_errors, page_request
from ragstream.domain.users.enums import Role
from ragstream.domain.users.validation import check_storable_text, normalize_display_name


def require_admin(viewer: User) -> None:
    """The coarse gate of admin-only operations (also the `IsAdmin` permission)."""
    if not viewer.is_admin:
        raise Forbidden("administrator role required")


async def get_user(session: AsyncSession, viewer: User, user_id: uuid.UUID) -> User:
    """Yourself, or anyone for an admin; otherwise the same NOT_FOUND as a missing id."""
    user = await UserRepository(session).get_readable(viewer, user_id)
    if user is None:
        raise not_found("user")
    return user


async def get_users(
    session: AsyncSession, viewer: User, ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, User]:
    """The accounts among ``ids`` the viewer may see (itself; anyone for an admin), by id."""
    return await UserRepository(session).get_many_readable(viewer, ids)


async def list_users(
    session: AsyncSession, viewer: User, *, first: int | None, after: str | None, search: str | None
) -> Page[User]:
    require_admin(viewer)
    term = (search or "").strip() or None
    if term is not None:
        check_storable_text(term, field="search")
    with cursor_errors():
        return await UserRepository(session).list(page_request(first, after), search=term)


async def update_me(session: AsyncSession, viewer: User, *, display_name: str | None) -> User:
    if display_name is not None:
        viewer.display_name = normalize_display_name(display_name)
    await session.flush()
    return viewer


async def update_user(
    session: AsyncSession,
    viewer: User,
    user_id: uuid.UUID,
    *,
    role: Role | None,
    is_active: bool | None,
    display_name: str | None,
) -> User:
    """Admin changes. Deactivation signs the user out everywhere at once."""
    require_admin(viewer)
    user = await UserRepository(session).get_readable(viewer, user_id)
    if user is None:
        raise not_found("user")
    if user.id == viewer.id and (role == Role.USER or is_active is False):
        # Otherwise the last admin could lock everyone out of administration.
        raise InvalidInput(
            "administrators cannot demote or deactivate themselves",
            field="role" if role == Role.USER else "isActive",
        )
    if role is not None:
        user.role = role
    if display_name is not None:
        user.display_name = normalize_display_name(display_name)
    if is_active is not None:
        user.is_active = is_active
        if not is_active:
            await RefreshTokenRepository(session).revoke_all_for_user(user.id)
    await session.flush()
    return user
