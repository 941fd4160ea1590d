from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import User
from ragstream.db.repositories.users import UserRepository
from ragstream.domain.errors import InvalidInput
from ragstream.domain.users.enums import Role
from ragstream.domain.users.passwords import PasswordHasher, check_password_policy
from ragstream.domain.users.validation import normalize_email


async def account_exists(session: AsyncSession, email: str) -> bool:
    return await UserRepository(session).get_by_email(normalize_email(email)) is not None


async def ensure_admin(
    session: AsyncSession, hasher: PasswordHasher, *, email: str, password: str | None
) -> str:
    """Create an active admin, or promote an existing account.

    An existing account keeps its password and its active flag unless a password is given:
    then it is also re-passworded and reactivated (how an operator recovers a locked-out admin).
    A new account needs a password.
    """
    email = normalize_email(email)
    if password is not None:
        check_password_policy(password)
    users = UserRepository(session)
    user = await users.get_by_email(email)
    if user is None:
        if password is None:
            raise InvalidInput("a password is required for a new account", field="password")
        display_name = email.split("@", 1)[0][:100] or "admin"
        await users.add(
            User(
                email=email,
                display_name=display_name,
                password_hash=await hasher.hash(password),
                role=Role.ADMIN,
            )
        )
        return f"created admin {email}"
    user.role = Role.ADMIN
    if password is None:
        await session.flush()
        inactive = "" if user.is_active else " (the account stays deactivated)"
        return f"promoted {email} to admin, password unchanged{inactive}"
    user.is_active = True
    user.password_hash = await hasher.hash(password)
    await session.flush()
    return f"promoted {email} to admin with the given password"
