"""Migration 0006: the usage ledger is backfilled from the messages a deployment already has."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.migration_support import migrate


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


async def rows(engine: AsyncEngine, sql: str) -> Sequence[Any]:
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).all()


async def test_the_upgrade_backfills_usage_per_user_and_utc_day(
    database_url: str, engine: AsyncEngine
) -> None:
    await migrate(database_url, "down", "0005")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (id, email, display_name, password_hash) VALUES "
                "('00000000-0000-0000-0000-00000000000a', 'a@example.com', 'A', 'x'), "
                "('00000000-0000-0000-0000-00000000000b', 'b@example.com', 'B', 'x'), "
                "('00000000-0000-0000-0000-00000000000c', 'c@example.com', 'C', 'x')"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO conversations (id, owner_id, title) VALUES "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'a'), "
                "('00000000-0000-0000-0000-0000000000b1', "
                "'00000000-0000-0000-0000-00000000000b', 'b')"
            )
        )
        # A: two exchanges late on 1 March UTC (one answer interrupted, without token counts)
        # and one just after midnight; B: a question only; C: nothing.
        await conn.execute(
            text(
                "INSERT INTO messages (conversation_id, owner_id, role, status, created_at, "
                "prompt_tokens, completion_tokens) VALUES "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'USER', 'COMPLETE', "
                "'2026-03-01 22:00+00', NULL, NULL), "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'ASSISTANT', 'COMPLETE', "
                "'2026-03-01 22:00:01+00', 100, 20), "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'USER', 'COMPLETE', "
                "'2026-03-01 23:59:59+00', NULL, NULL), "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'ASSISTANT', 'INTERRUPTED', "
                "'2026-03-01 23:59:59.5+00', NULL, NULL), "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'USER', 'COMPLETE', "
                "'2026-03-02 00:00:01+00', NULL, NULL), "
                "('00000000-0000-0000-0000-0000000000a1', "
                "'00000000-0000-0000-0000-00000000000a', 'ASSISTANT', 'COMPLETE', "
                "'2026-03-02 00:00:02+00', 7, 3), "
                "('00000000-0000-0000-0000-0000000000b1', "
                "'00000000-0000-0000-0000-00000000000b', 'USER', 'COMPLETE', "
                "'2026-03-05 12:00+00', NULL, NULL)"
            )
        )

    await migrate(database_url, "up", "heads")

    ledger = await rows(
        engine,
        "SELECT right(user_id::text, 1), day::text, questions, answers, prompt_tokens, "
        "completion_tokens FROM usage_daily ORDER BY 1, 2",
    )
    assert [tuple(r) for r in ledger] == [
        ("a", "2026-03-01", 2, 2, 100, 20),
        ("a", "2026-03-02", 1, 1, 7, 3),
        ("b", "2026-03-05", 1, 0, 0, 0),
    ]
    # The ledger no longer depends on the messages.
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM conversations"))
    assert len(await rows(engine, "SELECT 1 FROM usage_daily")) == 3


async def test_the_downgrade_drops_only_the_ledger(database_url: str, engine: AsyncEngine) -> None:
    await migrate(database_url, "down", "0005")

    tables = await rows(engine, "SELECT to_regclass('usage_daily'), to_regclass('messages')")

    assert tuple(tables[0]) == (None, "messages")
    await migrate(database_url, "up", "heads")
    assert tuple((await rows(engine, "SELECT to_regclass('usage_daily')::text"))[0]) == (
        "usage_daily",
    )
