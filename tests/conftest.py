"""Fixtures: one embedded PostgreSQL per test session; a fresh database per test, cloned from a
migrated template; a live server over it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from ragstream.db.embedded import EmbeddedDatabase, start_embedded
from ragstream.db.migrate import upgrade_to_head
from ragstream.settings import Settings
from tests.chat_stub import ChatStub
from tests.support import LiveServer, running_server

pytest_plugins = ("tests.hermetic", "pytester")

TEMPLATE = "ragstream_template"
TEST_JWT_SECRET = "test-secret-" + "x" * 40


@pytest.fixture(scope="session")
def embedded_pg() -> Iterator[EmbeddedDatabase]:
    # Its own folder, outside pytest's basetemp: pytest prunes old basetemps, and a concurrent run
    # pruning this one would delete a live server's files.
    root = Path(tempfile.mkdtemp(prefix="ragstream-test-pg-"))
    database = start_embedded(root)

    async def make_template() -> None:
        conn = await asyncpg.connect(database.libpq_uri("postgres"))
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
            await conn.execute(f"CREATE DATABASE {TEMPLATE}")
        finally:
            await conn.close()

    asyncio.run(make_template())
    upgrade_to_head(database.url(TEMPLATE))
    yield database
    database.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def database_url(embedded_pg: EmbeddedDatabase) -> AsyncIterator[str]:
    """A private database for one test, cloned from the migrated template (fast, isolated)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(embedded_pg.libpq_uri("postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE}')
    finally:
        await conn.close()
    yield embedded_pg.url(name)
    conn = await asyncpg.connect(embedded_pg.libpq_uri("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "jwt_secret": TEST_JWT_SECRET,
        # The OWASP minimum for argon2id keeps the suite fast while exercising the real hasher.
        "argon2_time_cost": 2,
        "argon2_memory_kib": 19_456,
        "argon2_parallelism": 1,
        "login_attempts_per_minute": 1_000,
        "login_attempts_per_minute_per_client": 1_000,
        "introspection": True,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    async with running_server(settings) as live:
        yield live


@pytest.fixture
async def chat_stub() -> AsyncIterator[ChatStub]:
    """A local OpenAI-compatible server (embeddings and streamed chat completions)."""
    stub = ChatStub()
    async with stub:
        yield stub
