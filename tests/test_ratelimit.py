"""The sign-in limits: sliding windows per key, counted in the database, so they hold across
every server process on it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.engine import make_engine, make_sessionmaker
from ragstream.db.models.users import SignInAttempt
from ragstream.domain.errors import RateLimited
from ragstream.domain.users.ratelimit import SlidingWindowLimiter
from tests.conftest import make_settings
from tests.support import running_server
from tests.test_auth import login


@contextlib.asynccontextmanager
async def database(
    database_url: str, tmp_path: Path
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A pool of its own: one per simulated process."""
    engine = make_engine(database_url, make_settings(database_url, tmp_path))
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _hit(
    sessions: async_sessionmaker[AsyncSession], limiter: SlidingWindowLimiter, key: str
) -> RateLimited | None:
    async with sessions.begin() as session:
        return await limiter.hit(session, key)


async def _attempts(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(SignInAttempt)) or 0)


async def test_each_key_has_its_own_limit_and_a_refusal_counts_nothing(
    database_url: str, tmp_path: Path
) -> None:
    limiter = SlidingWindowLimiter("test", limit=2)
    async with database(database_url, tmp_path) as sessions:
        assert await _hit(sessions, limiter, "a") is None
        assert await _hit(sessions, limiter, "a") is None

        refused = await _hit(sessions, limiter, "a")

        assert refused is not None
        assert refused.code == "RATE_LIMITED"
        assert refused.extensions["reason"] == "TOO_MANY_ATTEMPTS"
        assert refused.extensions["limit"] == 2
        assert 1 <= refused.extensions["retryAfterSeconds"] <= 60
        assert await _attempts(sessions) == 2
        assert await _hit(sessions, limiter, "b") is None


async def test_processes_count_against_one_window(database_url: str, tmp_path: Path) -> None:
    async with database(database_url, tmp_path) as a, database(database_url, tmp_path) as b:
        limiter_a = SlidingWindowLimiter("test", limit=3)
        limiter_b = SlidingWindowLimiter("test", limit=3)
        assert await _hit(a, limiter_a, "k") is None
        assert await _hit(b, limiter_b, "k") is None
        assert await _hit(a, limiter_a, "k") is None

        assert await _hit(b, limiter_b, "k") is not None
        assert await _hit(a, limiter_a, "k") is not None


async def test_concurrent_attempts_cannot_overshoot_the_limit(
    database_url: str, tmp_path: Path
) -> None:
    async with database(database_url, tmp_path) as a, database(database_url, tmp_path) as b:
        limiter = SlidingWindowLimiter("test", limit=5)
        outcomes = await asyncio.gather(*(_hit(a if n % 2 else b, limiter, "k") for n in range(12)))
        assert sum(outcome is None for outcome in outcomes) == 5
        assert await _attempts(a) == 5


async def test_attempts_past_the_window_no_longer_count_and_are_deleted(
    database_url: str, tmp_path: Path
) -> None:
    limiter = SlidingWindowLimiter("test", limit=1)
    async with database(database_url, tmp_path) as sessions:
        async with sessions.begin() as session:
            await session.execute(
                text(
                    "INSERT INTO sign_in_attempts (scope, key, at) "
                    "VALUES ('test', 'k', now() - interval '61 seconds')"
                )
            )

        assert await _hit(sessions, limiter, "k") is None
        assert await _attempts(sessions) == 1  # the old one went


async def test_login_limits_hold_across_two_servers(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, login_attempts_per_minute=2)
    async with running_server(settings) as a, running_server(settings) as b:
        account = await a.register()
        assert (await login(a, account.email, "wrong password!")).code == "UNAUTHENTICATED"
        assert (await login(b, account.email, "wrong password!")).code == "UNAUTHENTICATED"

        refused = await login(a, account.email)  # even the right password, on either server
        assert refused.code == "RATE_LIMITED"
        assert refused.errors[0]["extensions"]["reason"] == "TOO_MANY_ATTEMPTS"
        assert (await login(b, account.email)).code == "RATE_LIMITED"
