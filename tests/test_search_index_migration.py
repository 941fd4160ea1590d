"""Migration 0010: the chunks' HNSW index is rebuilt with m 24 and ef_construction 96, unless
it was built with parameters of its own."""

from __future__ import annotations

import asyncpg

from tests.migration_support import migrate

OPTIONS = (
    "SELECT c.reloptions, pg_get_indexdef(c.oid) FROM pg_class c"
    " WHERE c.relname = 'ix_chunks_embedding_hnsw'"
)


async def sql(database_url: str, statement: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        return list(await conn.fetch(statement))
    finally:
        await conn.close()


async def index(database_url: str) -> tuple[list[str] | None, str]:
    (row,) = await sql(database_url, OPTIONS)
    return row[0], row[1]


async def test_the_index_goes_to_the_new_parameters_and_back(database_url: str) -> None:
    options, definition = await index(database_url)
    assert options == ["m=24", "ef_construction=96"]
    assert "hnsw (embedding vector_cosine_ops)" in definition

    await migrate(database_url, "down", "0009")
    assert await index(database_url) == (
        None,
        definition.replace(" WITH (m='24', ef_construction='96')", ""),
    )

    await migrate(database_url, "up", "heads")
    assert await index(database_url) == (options, definition)


async def test_an_index_built_with_parameters_of_its_own_is_left_alone(database_url: str) -> None:
    await migrate(database_url, "down", "0009")
    await sql(database_url, "DROP INDEX ix_chunks_embedding_hnsw")
    await sql(
        database_url,
        "CREATE INDEX ix_chunks_embedding_hnsw ON chunks"
        " USING hnsw (embedding vector_cosine_ops) WITH (m = 20, ef_construction = 80)",
    )

    await migrate(database_url, "up", "heads")
    assert (await index(database_url))[0] == ["m=20", "ef_construction=80"]
    await migrate(database_url, "down", "0009")
    assert (await index(database_url))[0] == ["m=20", "ef_construction=80"]
    await migrate(database_url, "up", "heads")
