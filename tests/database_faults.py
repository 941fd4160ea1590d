"""Database faults made from outside the server, to check that they reach clients masked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy import make_url


def database_of(database_url: str) -> tuple[str, str]:
    """The test database's name and a libpq URI of the maintenance database beside it."""
    url = make_url(database_url)
    assert url.database
    admin = url.set(drivername="postgresql", database="postgres")
    return url.database, admin.render_as_string(hide_password=False)


async def end_connections(database_url: str) -> None:
    """Every open connection to the test database is ended (as a restart would end them)."""
    name, admin_uri = database_of(database_url)
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
    finally:
        await conn.close()


@asynccontextmanager
async def database_unreachable(database_url: str) -> AsyncIterator[str]:
    """The database refuses new connections and its open ones are ended; yields its name."""
    name, admin_uri = database_of(database_url)
    conn = await asyncpg.connect(admin_uri)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield name
    finally:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await conn.close()
