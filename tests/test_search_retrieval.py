"""Retrieval against PostgreSQL: the full-text half, its statistics, and scoped planner settings."""

from __future__ import annotations

import uuid

from sqlalchemy import text

from ragstream.db.models import User
from ragstream.db.repositories.search import SearchRepository, tsquery_literal
from ragstream.domain.retrieval.service import search
from tests.documents_support import create, wait_until_idle
from tests.support import LiveServer


async def test_lexemes_match_literally(server: LiveServer) -> None:
    lexemes = ["it's", "back\\slash", "a & b", "!x", "pre:*", "w:A"]
    async with server.state.sessionmaker() as session:
        for lexeme in lexemes:
            matches = await session.scalar(
                text(
                    "SELECT array_to_tsvector(ARRAY[:lexeme]) @@ CAST(:query AS tsquery)"
                    " AND NOT array_to_tsvector(ARRAY['other']) @@ CAST(:query AS tsquery)"
                ),
                {"lexeme": lexeme, "query": tsquery_literal([lexeme], "|")},
            )
            assert matches is True, lexeme


async def test_words_in_most_chunks_rank_but_do_not_select(server: LiveServer) -> None:
    account = await server.register()
    for i in range(24):
        await create(server, account.access_token, f"Widget inventory report {i} about pallets.")
    await create(server, account.access_token, "Widget spotted at the zebra crossing.")
    await wait_until_idle(server)
    async with server.state.sessionmaker() as session:
        # What autovacuum does after enough writes: statistics on the chunks' lexemes.
        await session.execute(text("ANALYZE chunks"))
        await session.commit()

    async with server.state.sessionmaker() as session:
        viewer = await session.get(User, uuid.UUID(account.id))
        assert viewer is not None
        shares = {
            term.lexeme: term.share
            for term in await SearchRepository(session).query_terms("widget zebra")
        }
        rare = await search(session, viewer, "widget zebra", 25, server.state.embedder)
        common = await search(session, viewer, "widget pallets", 25, server.state.embedder)

    assert shares["widget"] == 1.0
    assert shares["zebra"] is None or shares["zebra"] < 0.05
    # "widget" alone no longer selects: only the zebra chunk is in the full-text ranking.
    assert [hit.content for hit in rare if hit.text_rank is not None] == [
        "Widget spotted at the zebra crossing."
    ]
    assert rare[0].content == "Widget spotted at the zebra crossing."
    assert len(rare) == 25  # the vector half still fills the limit
    # Only common words: chunks holding all of them are selected.
    in_text = {hit.content for hit in common if hit.text_rank is not None}
    assert len(in_text) == 24
    assert "Widget spotted at the zebra crossing." not in in_text


SETTINGS = (
    "SELECT current_setting('enable_seqscan'), current_setting('enable_indexscan'),"
    " current_setting('plan_cache_mode'), current_setting('hnsw.ef_search'),"
    " current_setting('hnsw.iterative_scan'), current_setting('hnsw.max_scan_tuples')"
)


async def test_search_leaves_the_transactions_planner_settings_alone(server: LiveServer) -> None:
    account = await server.register()
    await create(server, account.access_token, "Cold storage keeps fish at minus twenty.")
    await wait_until_idle(server)

    async with server.state.sessionmaker() as session:
        viewer = await session.get(User, uuid.UUID(account.id))
        assert viewer is not None
        # pgvector's settings exist once its library is loaded in this backend (a fresh
        # connection has not loaded it yet): load it, so "before" has every value.
        await session.execute(text("SELECT CAST('[1]' AS vector)"))
        before = (await session.execute(text(SETTINGS))).one()
        hits = await search(session, viewer, "fish storage", 5, server.state.embedder)
        after = (await session.execute(text(SETTINGS))).one()

    assert len(hits) == 1
    assert tuple(after) == tuple(before)
    assert before[:3] == ("on", "on", "auto")
