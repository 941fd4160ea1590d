"""Start-up skips alembic when the database is at the migration heads, and only then."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ragstream.db.migrate import alembic_config, at_head, head_revisions, upgrade_to_head


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


def test_the_heads_read_from_the_scripts_are_alembics_heads() -> None:
    scripts = ScriptDirectory.from_config(alembic_config("postgresql+asyncpg://unused/none"))
    assert head_revisions() == frozenset(scripts.get_heads())


async def test_a_migrated_database_is_at_head(database_url: str, engine: AsyncEngine) -> None:
    assert await at_head(engine)


async def test_a_database_one_migration_behind_is_not_and_upgrading_brings_it_there(
    database_url: str, engine: AsyncEngine
) -> None:
    # Given a database whose newest migration was undone
    config = alembic_config(database_url)
    (head,) = head_revisions()
    parent = ScriptDirectory.from_config(config).get_revision(head).down_revision
    assert isinstance(parent, str)
    await asyncio.to_thread(command.downgrade, config, parent)

    # Then it is not at head, and start-up's upgrade brings it there
    assert not await at_head(engine)
    await asyncio.to_thread(upgrade_to_head, database_url)
    assert await at_head(engine)


async def test_a_database_with_no_version_table_or_an_unknown_version_is_not(
    engine: AsyncEngine,
) -> None:
    # A version a newer ragstream recorded is left to alembic, which names the problem.
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    assert not await at_head(engine)

    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE alembic_version"))
    assert not await at_head(engine)
