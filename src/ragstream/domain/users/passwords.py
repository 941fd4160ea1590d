"""argon2id password hashing, run off the event loop with a concurrency cap."""

from __future__ import annotations

import secrets

import anyio
from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError

from ragstream.domain.errors import InvalidInput
from ragstream.settings import Settings

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 256


def check_password_policy(password: str, field: str = "password") -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise InvalidInput(
            f"password must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
            field=field,
        )
    try:
        password.encode()
    except UnicodeEncodeError:
        # JSON can carry lone surrogates, which have no UTF-8 form to hash.
        raise InvalidInput("password is not valid Unicode text", field=field) from None


class PasswordHasher:
    """Hashes and verifies passwords in worker threads.

    A hash costs tens of milliseconds of CPU and tens of MiB of memory, so at most ``concurrency``
    run at once: a login flood queues here instead of starving the event loop or the machine.
    """

    def __init__(
        self, *, time_cost: int, memory_kib: int, parallelism: int, concurrency: int
    ) -> None:
        self._argon2 = Argon2Hasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._limiter = anyio.CapacityLimiter(concurrency)
        self._dummy_hash: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordHasher:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            concurrency=settings.password_hash_concurrency,
        )

    async def hash(self, password: str) -> str:
        return await anyio.to_thread.run_sync(self._argon2.hash, password, limiter=self._limiter)

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when ``password`` matches; a corrupt stored hash is an ordinary mismatch."""

        def check() -> bool:
            try:
                return self._argon2.verify(password_hash, password)
            # ValueError: a hash or password with no ASCII / UTF-8 form cannot match.
            except (VerificationError, InvalidHashError, ValueError):
                return False

        return await anyio.to_thread.run_sync(check, limiter=self._limiter)

    async def burn(self, password: str) -> None:
        """Spend a real verification's time, so an unknown email answers like a wrong password."""
        if self._dummy_hash is None:
            self._dummy_hash = await self.hash(secrets.token_urlsafe(16))
        await self.verify(self._dummy_hash, password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._argon2.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return False
