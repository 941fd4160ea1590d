"""argon2id password hashing, run off the event loop with a concurrency cap."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import InvalidHashError, VerificationError

from ragstream.domain.errors import InvalidInput, RateLimited
from ragstream.settings import Settings

T = TypeVar("T")
# Hashing threads run at a lower scheduling priority than the event loop's thread.
HASHING_NICENESS = 10


def _lower_thread_priority() -> None:
    """Linux applies a nice value to the calling thread alone, and argon2's own worker threads
    (``parallelism``) inherit it: a flood of hashes then yields the CPU to request handling."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


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
    """Hashes and verifies passwords in its own low-priority threads.

    A hash costs tens of milliseconds of CPU and tens of MiB of memory, so at most ``concurrency``
    run at once. A hash that cannot start within ``wait_seconds`` is refused (RATE_LIMITED,
    reason SERVER_BUSY): a sign-in flood is turned away instead of queueing without bound.
    Callers hold no database connection while they wait or hash (see AuthService).
    """

    def __init__(
        self,
        *,
        time_cost: int,
        memory_kib: int,
        parallelism: int,
        concurrency: int | None = None,
        wait_seconds: float = 2.0,
    ) -> None:
        self._argon2 = Argon2Hasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        # Default: one fewer than the cores, so a flood of sign-ins leaves one to serving.
        self.concurrency = max(1, concurrency or (os.cpu_count() or 1) - 1)
        self.wait_seconds = wait_seconds
        self.slots = asyncio.Semaphore(self.concurrency)
        self.waiting = 0
        self._dummy_hash: asyncio.Task[str] | None = None
        self._threads: ThreadPoolExecutor | None = None

    def _executor(self) -> ThreadPoolExecutor:
        if self._threads is None:  # threads start with the first hash, not at construction
            self._threads = ThreadPoolExecutor(
                self.concurrency, "password-hash", initializer=_lower_thread_priority
            )
        return self._threads

    def close(self) -> None:
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)

    async def _run(self, work: Callable[[], T]) -> T:
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait_seconds):
                await self.slots.acquire()
        except TimeoutError:
            raise RateLimited(
                "the server is busy signing people in; try again in a moment",
                extensions={
                    "reason": "SERVER_BUSY",
                    "limit": self.concurrency,
                    "retryAfterSeconds": 1,
                    "resetAt": None,
                },
            ) from None
        finally:
            self.waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor(), work)
        finally:
            self.slots.release()

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordHasher:
        return cls(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            concurrency=settings.password_hash_concurrency,
            wait_seconds=settings.password_hash_wait_seconds,
        )

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._argon2.hash(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        """True when ``password`` matches; a corrupt stored hash is an ordinary mismatch."""

        def check() -> bool:
            try:
                return self._argon2.verify(password_hash, password)
            # ValueError: a hash or password with no ASCII / UTF-8 form cannot match.
            except (VerificationError, InvalidHashError, ValueError):
                return False

        return await self._run(check)

    async def burn(self, password: str) -> None:
        """Spend a real verification's time, so an unknown email answers like a wrong password."""
        # One shared hash: a burst of unknown emails must not each pay for a hash of its own.
        shared = self._dummy_hash
        if shared is None or (shared.done() and (shared.cancelled() or shared.exception())):
            shared = self._dummy_hash = asyncio.ensure_future(self.hash(secrets.token_urlsafe(16)))
        await self.verify(await asyncio.shield(shared), password)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._argon2.check_needs_rehash(password_hash)
        except (InvalidHashError, ValueError):
            return False
