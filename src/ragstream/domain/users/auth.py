"""Sign-up, sign-in, token rotation and password changes.

Functions that hash a password (register, login, change_password) receive the caller's
`Transactions` instead of a session: they read in one block, give the connection back, hash with
none held, and write in a second block, so a burst of sign-ins cannot empty the connection pool
while argon2 runs. The others receive the session of the caller's unit of work and never commit it.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import RefreshToken, User
from ragstream.db.repositories.users import RefreshTokenRepository, UserRepository
from ragstream.domain.errors import Conflict, InvalidInput, Unauthenticated
from ragstream.domain.users.passwords import PasswordHasher, check_password_policy
from ragstream.domain.users.ratelimit import SlidingWindowLimiter
from ragstream.domain.users.tokens import AccessClaims, TokenService, refresh_digest
from ragstream.domain.users.validation import normalize_display_name, normalize_email

INVALID_CREDENTIALS = "invalid email or password"


class Transactions(Protocol):
    """The caller's database work (a request's `Context` satisfies it)."""

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One unit of work: committed when the block succeeds, rolled back when it raises."""
        ...

    async def release(self) -> None:
        """Give back any connection held between blocks, before a wait that needs none."""
        ...


@dataclass(frozen=True)
class AuthResult:
    user: User
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class RefreshRefused:
    """A refresh refused after a change that must be committed all the same: a spent token came
    back, so its whole family was revoked. The caller commits, then raises ``error``."""

    error: Unauthenticated


class AuthService:
    def __init__(
        self,
        hasher: PasswordHasher,
        tokens: TokenService,
        login_limiter: SlidingWindowLimiter,
        client_limiter: SlidingWindowLimiter | None = None,
        *,
        register_limiter: SlidingWindowLimiter | None = None,
        register_client_limiter: SlidingWindowLimiter | None = None,
    ) -> None:
        self.hasher = hasher
        self.tokens = tokens
        self.login_limiter = login_limiter
        # Per client address: looser than per email, since many people may share one address.
        self.client_limiter = client_limiter or login_limiter
        self.register_limiter = register_limiter
        self.register_client_limiter = register_client_limiter

    async def _limit(
        self, database: Transactions, *checks: tuple[SlidingWindowLimiter | None, str]
    ) -> None:
        """Counts the attempt in each limit, in order; raises the first refusal once the
        attempts counted before it are committed (a refused attempt counts in no later one)."""
        refused = None
        async with database.transaction() as session:
            for limiter, key in checks:
                if limiter is not None:
                    refused = await limiter.hit(session, key)
                    if refused is not None:
                        break
        if refused is not None:
            raise refused

    async def register(
        self,
        database: Transactions,
        *,
        email: str,
        password: str,
        display_name: str,
        client: str,
    ) -> AuthResult:
        email = normalize_email(email)
        display_name = normalize_display_name(display_name)
        check_password_policy(password)
        # Per address first, so one address cannot use up everyone's budget past its own.
        await self._limit(
            database,
            (self.register_client_limiter, f"client:{client}"),
            (self.register_limiter, "all"),
        )
        async with database.transaction() as session:
            if await UserRepository(session).get_by_email(email) is not None:
                raise Conflict("an account with this email already exists", field="email")
        await database.release()
        password_hash = await self.hasher.hash(password)
        async with database.transaction() as session:
            user = User(email=email, display_name=display_name, password_hash=password_hash)
            try:
                # A savepoint: a concurrent sign-up with the same email fails alone, as a conflict.
                async with session.begin_nested():
                    await UserRepository(session).add(user)
            except IntegrityError as exc:
                raise Conflict("an account with this email already exists", field="email") from exc
            return await self._start_session(session, user)

    async def login(
        self, database: Transactions, *, email: str, password: str, client: str
    ) -> AuthResult:
        """Same message and comparable time for an unknown email and a wrong password."""
        # The client first: attempts from a client already blocked must not spend the email's
        # budget, or one address could lock the owner out from everywhere else.
        await self._limit(
            database,
            (self.client_limiter, f"client:{client}"),
            # Capped: the limiter keeps a key per email tried, and the key must stay small.
            (self.login_limiter, f"email:{email.strip().lower()[:320]}"),
        )
        try:
            # Normalised exactly as at sign-up; an invalid address names no account.
            key: str | None = normalize_email(email)
        except InvalidInput:
            key = None
        user = None
        if key:
            async with database.transaction() as session:
                user = await UserRepository(session).get_by_email(key)
        await database.release()
        if user is None:
            await self.hasher.burn(password)
            raise Unauthenticated(INVALID_CREDENTIALS)
        if not await self.hasher.verify(user.password_hash, password) or not user.is_active:
            raise Unauthenticated(INVALID_CREDENTIALS)
        rehashed = None
        if self.hasher.needs_rehash(user.password_hash):
            rehashed = await self.hasher.hash(password)
        async with database.transaction() as session:
            current = await UserRepository(session).get(user.id)
            # Deactivated, or the password changed, while the hash ran.
            if (
                current is None
                or not current.is_active
                or current.password_hash != user.password_hash
            ):
                raise Unauthenticated(INVALID_CREDENTIALS)
            if rehashed is not None:
                current.password_hash = rehashed
            return await self._start_session(session, current)

    async def refresh(self, session: AsyncSession, raw_token: str) -> AuthResult | RefreshRefused:
        """Rotate a refresh token. Presenting a spent one revokes its whole family: that change
        is returned as a refusal rather than raised, so the caller's unit of work keeps it."""
        tokens = RefreshTokenRepository(session)
        current = await tokens.get_for_update(refresh_digest(raw_token))
        if current is None or current.revoked_at is not None:
            raise Unauthenticated("invalid refresh token")
        if current.used_at is not None:
            await tokens.revoke_family(current.family_id)
            return RefreshRefused(
                Unauthenticated("refresh token already used; please sign in again")
            )
        if current.expires_at <= datetime.now(UTC):
            raise Unauthenticated("refresh token expired")
        user = await UserRepository(session).get(current.user_id)
        if user is None or not user.is_active:
            raise Unauthenticated("invalid refresh token")
        current.used_at = datetime.now(UTC)
        return await self._issue(session, user, current.family_id)

    async def logout(self, session: AsyncSession, raw_token: str) -> None:
        """End the session the refresh token belongs to. Unknown tokens are ignored (no oracle)."""
        tokens = RefreshTokenRepository(session)
        current = await tokens.get_for_update(refresh_digest(raw_token))
        if current is not None:
            await tokens.revoke_family(current.family_id)

    async def change_password(
        self,
        database: Transactions,
        user: User,
        claims: AccessClaims,
        *,
        current_password: str,
        new_password: str,
    ) -> None:
        """Set a new password and sign out every other session of the user."""
        check_password_policy(new_password, field="newPassword")
        await database.release()  # held since the viewer check
        if not await self.hasher.verify(user.password_hash, current_password):
            raise Unauthenticated("current password is incorrect")
        new_hash = await self.hasher.hash(new_password)
        async with database.transaction() as session:
            current = await UserRepository(session).get(user.id)
            # Changed meanwhile by another session: the password checked is no longer the one.
            if current is None or current.password_hash != user.password_hash:
                raise Unauthenticated("current password is incorrect")
            current.password_hash = new_hash
            await RefreshTokenRepository(session).revoke_all_for_user(
                user.id, keep_family=claims.session_id
            )
            await session.flush()

    async def _start_session(self, session: AsyncSession, user: User) -> AuthResult:
        return await self._issue(session, user, uuid.uuid4())

    async def _issue(self, session: AsyncSession, user: User, family_id: uuid.UUID) -> AuthResult:
        refresh = self.tokens.issue_refresh()
        await RefreshTokenRepository(session).add(
            RefreshToken(
                user_id=user.id,
                family_id=family_id,
                token_hash=refresh.digest,
                expires_at=refresh.expires_at,
            )
        )
        return AuthResult(
            user=user,
            access_token=self.tokens.issue_access(user.id, family_id),
            refresh_token=refresh.raw,
            expires_in=self.tokens.access_ttl,
        )
