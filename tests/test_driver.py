"""Driver statements (db/driver.py) on a lease and on a session: the same rows SQLAlchemy
gives, and a connection that died or was left busy is never handed out again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import bindparam, func, literal, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ragstream.db.driver import DriverLease, DriverStatement
from ragstream.db.models import User
from ragstream.domain.users.enums import Role
from tests.database_faults import database_of

ROLES = select(User.role, literal(Role.ADMIN).label("given")).where(User.role == bindparam("role"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, pool_size=3, max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def backend_of(lease: DriverLease) -> int:
    driver = lease.pooled.driver_connection
    assert driver is not None
    pid: int = await driver.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_rows_are_processed_as_sqlalchemy_processes_them(
    engine: AsyncEngine, database_url: str
) -> None:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        await conn.execute(
            "INSERT INTO users (id, email, display_name, password_hash, role, is_active) "
            "VALUES (gen_random_uuid(), 'a@example.com', 'A', 'x', 'ADMIN', true)"
        )
    finally:
        await conn.close()
    statement = DriverStatement(ROLES)
    lease = await DriverLease.checkout(engine)
    try:
        leased = await statement.fetch(lease, {"role": Role.ADMIN})
    finally:
        lease.release()
    async with engine.connect() as connection:
        expected = [tuple(row) for row in await connection.execute(ROLES, {"role": Role.ADMIN})]
    assert leased == expected == [(Role.ADMIN, Role.ADMIN)]
    assert type(leased[0][0]) is Role


async def test_a_dead_connection_is_reported_invalidated_with_the_rest_of_the_pool(
    engine: AsyncEngine, database_url: str
) -> None:
    statement = DriverStatement(select(literal(1).label("one")))
    leases = [await DriverLease.checkout(engine) for _ in range(2)]
    pids = [await backend_of(lease) for lease in leases]
    for lease in leases:
        lease.release()
    _, admin_uri = database_of(database_url)
    admin = await asyncpg.connect(admin_uri)
    try:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)
    finally:
        await admin.close()
    lease = await DriverLease.checkout(engine)
    with pytest.raises(DBAPIError) as raised:
        await statement.fetch(lease, {})
    lease.release()
    assert raised.value.connection_invalidated
    # The other connection of the same generation is not handed out again either.
    lease = await DriverLease.checkout(engine)
    try:
        assert await backend_of(lease) not in pids
        assert await statement.fetch(lease, {}) == [(1,)]
    finally:
        lease.release()


async def test_a_statement_cancelled_halfway_discards_its_connection(
    engine: AsyncEngine,
) -> None:
    sleeping = DriverStatement(select(func.pg_sleep(5).label("slept")))
    lease = await DriverLease.checkout(engine)
    pid = await backend_of(lease)
    task = asyncio.create_task(sleeping.fetch(lease, {}))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not lease.pooled.is_valid
    lease.release()
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT pg_backend_pid()")) != pid
        assert await connection.scalar(text("SELECT 1")) == 1
