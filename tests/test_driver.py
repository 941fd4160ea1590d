"""Driver statements (db/driver.py) on a lease and on a session: the same rows SQLAlchemy
gives, and a connection that died or was left busy is never handed out again."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Text, bindparam, func, insert, literal, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ragstream.db.driver import DriverLease, DriverStatement
from ragstream.db.models import User
from ragstream.db.unit_of_work import wrote
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
        await lease.release()
    async with engine.connect() as connection:
        expected = [tuple(row) for row in await connection.execute(ROLES, {"role": Role.ADMIN})]
    assert leased == expected == [(Role.ADMIN, Role.ADMIN)]
    assert type(leased[0][0]) is Role


@asynccontextmanager
async def maintenance(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the maintenance database beside the test database."""
    _, admin_uri = database_of(database_url)
    admin = await asyncpg.connect(admin_uri)
    try:
        yield admin
    finally:
        await admin.close()


async def terminate(database_url: str, pids: list[int]) -> None:
    """Ends those backends from outside and waits until they are gone."""
    async with maintenance(database_url) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) pid", pids)
        for _ in range(500):
            left = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", pids
            )
            if not left:
                return
            await asyncio.sleep(0.01)
    raise AssertionError(f"backends {pids} still running")


async def sleeping_statement(lease: DriverLease) -> tuple[int, asyncio.Task[Any]]:
    """The lease's backend pid, and a task running a 5 s statement on it, under way."""
    pid = await backend_of(lease)
    sleeping = DriverStatement(select(func.pg_sleep(5).label("slept")))
    task = asyncio.create_task(sleeping.fetch(lease, {}))
    await asyncio.sleep(0.3)
    return pid, task


async def test_a_dead_connection_is_reported_invalidated_with_the_rest_of_the_pool(
    engine: AsyncEngine, database_url: str
) -> None:
    statement = DriverStatement(select(literal(1).label("one")))
    leases = [await DriverLease.checkout(engine) for _ in range(2)]
    pids = [await backend_of(lease) for lease in leases]
    for lease in leases:
        await lease.release()
    await terminate(database_url, pids)
    lease = await DriverLease.checkout(engine)
    with pytest.raises(DBAPIError) as raised:
        await statement.fetch(lease, {})
    await lease.release()
    assert raised.value.connection_invalidated
    # The other connection of the same generation is not handed out again either.
    lease = await DriverLease.checkout(engine)
    try:
        assert await backend_of(lease) not in pids
        assert await statement.fetch(lease, {}) == [(1,)]
    finally:
        await lease.release()


async def test_a_statement_cancelled_halfway_discards_its_connection(
    engine: AsyncEngine,
) -> None:
    lease = await DriverLease.checkout(engine)
    pid, task = await sleeping_statement(lease)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not lease.pooled.is_valid
    await lease.release()
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT pg_backend_pid()")) != pid
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_a_connection_ended_during_a_statement_is_reported_invalidated(
    engine: AsyncEngine, database_url: str
) -> None:
    lease = await DriverLease.checkout(engine)
    pid, running = await sleeping_statement(lease)
    await terminate(database_url, [pid])
    with pytest.raises(DBAPIError) as raised:
        await running
    await lease.release()
    assert raised.value.connection_invalidated
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_leases_given_back_beyond_the_pool_size_are_closed(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=1)
    name, _ = database_of(database_url)
    try:
        for _ in range(5):
            leases = [await DriverLease.checkout(engine) for _ in range(2)]
            for lease in leases:
                await lease.release()  # the second one overflows the pool: closed
    finally:
        await engine.dispose()
    async with maintenance(database_url) as admin:
        left = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", name
        )
    assert left == 0


async def test_a_writing_statement_runs_in_the_sessions_transaction_and_a_read_needs_none(
    engine: AsyncEngine,
) -> None:
    xid = select(func.cast(func.pg_current_xact_id(), Text))

    async def transactions(*, writes: bool) -> set[str]:
        statement = DriverStatement(xid, writes=writes)
        async with AsyncSession(engine) as session:
            ids = {(await statement.fetch(session, {}))[0][0] for _ in range(2)}
            await session.rollback()
        return ids

    # A read sends no BEGIN: each statement is a transaction of its own.
    assert len(await transactions(writes=False)) == 2
    # A writing statement begins the session's transaction, which the next one shares.
    assert len(await transactions(writes=True)) == 1


async def test_what_a_writing_statement_wrote_ends_with_the_sessions_transaction(
    engine: AsyncEngine,
) -> None:
    added = (
        insert(User)
        .values(
            id=bindparam("id"), email=bindparam("email"), display_name="Probe", password_hash="-"
        )
        .returning(User.id)
        .cte("added")
    )
    write = DriverStatement(select(added.c.id), writes=True)
    emails = [f"driver-{uuid.uuid4().hex[:8]}@example.com" for _ in range(2)]
    async with AsyncSession(engine) as session:
        await write.fetch(session, {"id": uuid.uuid4(), "email": emails[0]})
        await session.rollback()
    async with AsyncSession(engine) as session:
        await write.fetch(session, {"id": uuid.uuid4(), "email": emails[1]})
        await session.commit()
    async with AsyncSession(engine) as session:
        stored = await session.scalars(select(User.email).where(User.email.in_(emails)))
        assert list(stored) == [emails[1]]


async def test_a_lease_goes_back_to_a_pool_with_room_at_once(database_url: str) -> None:
    engine = create_async_engine(database_url, pool_size=1, max_overflow=1)
    try:
        pool = engine.sync_engine.pool
        assert isinstance(pool, AsyncAdaptedQueuePool)
        first, second = [await DriverLease.checkout(engine) for _ in range(2)]
        pid = await backend_of(first)
        assert first._returns_at_once()  # valid, no transaction, room in the pool
        await first.release()
        assert pool.checkedin() == 1
        # The pool is full now: the overflow connection is closed, which awaits asyncpg.
        assert not second._returns_at_once()
        await second.release()
        again = await DriverLease.checkout(engine)
        assert await backend_of(again) == pid  # the connection given back is handed out
        again.pooled.invalidate()
        assert not again._returns_at_once()
        await again.release()
        assert pool.checkedin() == 1  # a new connection opens next time
    finally:
        await engine.dispose()


async def test_a_connection_dead_at_begin_is_reported_invalidated_and_not_reused(
    engine: AsyncEngine, database_url: str
) -> None:
    write = DriverStatement(select(literal(1).label("one")), begins=True)
    async with AsyncSession(engine) as session:
        raw = await (await session.connection()).get_raw_connection()
        assert raw.driver_connection is not None
        pid = await raw.driver_connection.fetchval("SELECT pg_backend_pid()")  # no BEGIN yet
        await terminate(database_url, [pid])
        with pytest.raises(DBAPIError) as raised:
            await write.fetch(session, {})
        assert raised.value.connection_invalidated
    async with AsyncSession(engine) as session:
        [(again,)] = await DriverStatement(select(func.pg_backend_pid())).fetch(session, {})
        assert again != pid
        assert await write.fetch(session, {}) == [(1,)]


async def test_only_a_writing_statement_makes_the_transaction_one_to_commit(
    engine: AsyncEngine,
) -> None:
    statement = select(literal(1).label("one"))
    made_writes = {}
    for name, kind in {
        "read": DriverStatement(statement),
        "begins": DriverStatement(statement, begins=True),
        "writes": DriverStatement(statement, writes=True),
    }.items():
        async with AsyncSession(engine) as session:
            await kind.fetch(session, {})
            made_writes[name] = wrote(session)
    assert made_writes == {"read": False, "begins": False, "writes": True}
