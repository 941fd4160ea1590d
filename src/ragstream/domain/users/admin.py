from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import User
from ragstream.db.repositories.users import UserRepository
from ragstream.domain.auth.passwords import PasswordHasher, check_password_policy
from ragstream.domain.users.validation import normalize_email


async def ensure_admin(
    session: AsyncSession, hasher: PasswordHasher, *, email: str, password: str
) -> str:
    """Create an active admin, or promote, reactivate and re-password an existing account."""
    email = normalize_email(email)
    check_password_policy(password)
    users = UserRepository(session)
    user = await users.get_by_email(email)
    password_hash = await hasher.hash(password)
    if user is None:
        display_name = email.split("@", 1)[0][:100] or "admin"
        await users.add(
            User(email=email, display_name=display_name, password_hash=password_hash, role="ADMIN")
        )
        return f"created admin {email}"
    user.role = "ADMIN"
    user.is_active = True
    user.password_hash = password_hash
    await session.flush()
    return f"promoted {email} to admin"
