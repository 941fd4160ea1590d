"""Retrieval against PostgreSQL: the full-text half, its statistics, and scoped planner settings."""

from __future__ import annotations

import contextlib
import json
import math
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ragstream.backend import Backend, connect
from ragstream.db.models import User
from ragstream.db.models.documents import Chunk, Document
from ragstream.db.repositories.search import (
    SearchRepository,
    index_scan_settings,
    nearest_statement,
    tsquery_literal,
)
from ragstream.domain.retrieval.service import SearchTuning, SideSessions, search
from tests.conftest import make_settings
from tests.documents_support import create, ingest_common_word_corpus, wait_until_idle
from tests.support import LiveServer, running_server


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


async def common_word_reader(server: LiveServer) -> uuid.UUID:
    """A new account holding the common-word corpus (`ingest_common_word_corpus`)."""
    account = await server.register()
    await ingest_common_word_corpus(server, account.access_token)
    return uuid.UUID(account.id)


async def user_of(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    assert user is not None
    return user


async def test_words_in_most_chunks_rank_but_do_not_select(server: LiveServer) -> None:
    reader_id = await common_word_reader(server)

    async with server.state.sessionmaker() as session:
        viewer = await user_of(session, reader_id)
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


def ranked(hits: list[Any]) -> list[tuple[Any, ...]]:
    return [(h.chunk_id, h.score, h.vector_rank, h.text_rank) for h in hits]


@contextlib.contextmanager
def statements_on(engine: AsyncEngine) -> Iterator[list[str]]:
    """The SQL of every statement sent through ``engine`` inside the block."""
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_the_full_text_half_runs_on_a_side_connection_and_ranks_alike(
    server: LiveServer,
) -> None:
    reader_id = await common_word_reader(server)
    state = server.state
    assert state.engine is not None
    assert state.side_engine is not None

    async with state.sessionmaker() as session:
        viewer = await user_of(session, reader_id)
        in_turn = await search(session, viewer, "widget zebra", 25, state.embedder)
        with statements_on(state.engine) as main, statements_on(state.side_engine) as side_sent:
            async with state.search_sides.session() as side:
                assert side is not None
                beside = await search(
                    session, viewer, "widget zebra", 25, state.embedder, side=side
                )

    # the full-text half went through the side pool, the vector half through the request's,
    # and both ranked as they do in one session
    assert any("@@" in sql for sql in side_sent)
    assert not any("<=>" in sql for sql in side_sent)
    assert any("<=>" in sql for sql in main)
    assert not any("@@" in sql for sql in main)
    assert ranked(beside) == ranked(in_turn)
    assert any(hit.text_rank is not None for hit in beside)


async def test_side_sessions_are_given_out_only_while_one_is_free(server: LiveServer) -> None:
    sides = SideSessions(server.state.sessionmaker, 1)
    async with sides.session() as first, sides.session() as second:
        taken = (first is not None, second is None)
    async with sides.session() as again, SideSessions().session() as off:
        freed = (again is not None, off is None)

    assert taken == (True, True)
    assert freed == (True, True)


async def test_when_the_vector_half_fails_the_full_text_half_is_stopped_and_returned(
    server: LiveServer,
) -> None:
    reader_id = await common_word_reader(server)
    state = server.state
    assert state.side_engine is not None
    # an ef_search pgvector refuses: the vector half's settings fail
    broken = SearchTuning(ef_search=0)

    async with state.sessionmaker() as session:
        viewer = await user_of(session, reader_id)
        with pytest.raises(asyncpg.exceptions.InvalidParameterValueError) as failed:
            async with state.search_sides.session() as side:
                await search(
                    session, viewer, "widget zebra", 5, state.embedder, tuning=broken, side=side
                )
        side_in_use = state.side_engine.pool.checkedout()  # type: ignore[attr-defined]

    assert "ef_search" in str(failed.value)
    assert side_in_use == 0


SEARCH_QUERY = "query($q: String!) { search(query: $q, limit: 5) { chunk { content } } }"


async def test_a_search_needs_one_connection_of_the_requests_pool(
    database_url: str, tmp_path: Path
) -> None:
    # given a server whose requests' pool is a single connection, which must not wait on the
    # search's second one
    settings = make_settings(
        database_url, tmp_path, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.5
    )
    async with running_server(settings) as server:
        account = await server.register()
        await create(server, account.access_token, "Cold storage keeps fish at minus twenty.")
        await wait_until_idle(server)
        assert server.state.side_engine is not None

        # when it searches
        with statements_on(server.state.side_engine) as side_sent:
            result = await server.execute(
                SEARCH_QUERY, {"q": "fish storage"}, token=account.access_token
            )

    # then it answers, its full-text half on the side connection
    assert result.ok()["search"][0]["chunk"]["content"].startswith("Cold storage")
    assert any("@@" in sql for sql in side_sent)


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


@contextlib.asynccontextmanager
async def one_connection(server: LiveServer) -> AsyncIterator[AsyncSession]:
    """A session that keeps one connection across its transactions (pgvector's settings
    exist only in a backend that has loaded its library)."""
    engine = server.state.engine
    assert engine is not None
    async with engine.connect() as connection, AsyncSession(bind=connection) as session:
        yield session


async def test_in_its_own_transaction_search_leaves_the_settings_to_its_end(
    server: LiveServer,
) -> None:
    account = await server.register()
    await create(server, account.access_token, "Cold storage keeps fish at minus twenty.")
    await wait_until_idle(server)

    async with one_connection(server) as session:
        await session.execute(text("SELECT CAST('[1]' AS vector)"))  # pgvector's settings
        before = (await session.execute(text(SETTINGS))).one()
        await session.rollback()
        viewer = await session.get(User, uuid.UUID(account.id))
        assert viewer is not None
        hits = await search(
            session, viewer, "fish storage", 5, server.state.embedder, own_transaction=True
        )
        during = (await session.execute(text(SETTINGS))).one()
        await session.rollback()  # the end of the transaction ends them
        after = (await session.execute(text(SETTINGS))).one()

    assert len(hits) == 1
    # Nothing was sent to set them back: the statements after it in the transaction ran
    # with them, and the transaction's end took them away.
    assert during[0] == "off"  # enable_seqscan
    assert during[2] == "force_custom_plan"
    assert tuple(after) == tuple(before)


@pytest.mark.parametrize("own_transaction", [False, True])
async def test_the_settings_hold_inside_the_block_when_nothing_ran_before_it(
    server: LiveServer, own_transaction: bool
) -> None:
    async with one_connection(server) as session:
        await session.execute(text("SELECT CAST('[1]' AS vector)"))  # pgvector's settings
        await session.commit()
        # A fresh transaction, nothing sent in it yet (as in an answer's preparation)
        repository = SearchRepository(session, own_transaction=own_transaction)
        async with repository._scoped(index_scan_settings(123, 4_567)):
            inside = (await session.execute(text(SETTINGS))).one()
        await session.rollback()

    assert tuple(inside) == ("off", "on", "force_custom_plan", "123", "relaxed_order", "4567")


async def test_a_failure_inside_the_settings_block_is_not_hidden_by_setting_them_back(
    server: LiveServer,
) -> None:
    async with one_connection(server) as session:
        await session.execute(text("SELECT CAST('[1]' AS vector)"))
        before = (await session.execute(text(SETTINGS))).one()
        await session.rollback()
        repository = SearchRepository(session)
        with pytest.raises(DBAPIError) as failed:
            async with repository._scoped(index_scan_settings(10, 20_000)):
                await session.execute(text("SELECT 1 / 0"))
        await session.rollback()
        after = (await session.execute(text(SETTINGS))).one()

    assert "division by zero" in str(failed.value.orig)
    assert tuple(after) == tuple(before)


def _unit(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector]


def _around(centre: list[float], spread: float, rng: random.Random) -> list[float]:
    """A unit vector ``spread`` (as a tangent length) away from ``centre`` in a random direction."""
    direction = _unit([rng.gauss(0.0, 1.0) for _ in centre])
    return _unit([c + spread * d for c, d in zip(centre, direction, strict=True)])


async def _owned_chunks(
    session: AsyncSession, owner: User, embeddings: list[list[float]]
) -> list[uuid.UUID]:
    """One private, ready document holding one chunk per embedding."""
    document = Document(
        owner_id=owner.id,
        title="Vectors",
        filename="vectors.txt",
        mime_type="text/plain",
        size_bytes=1,
        content_sha256=uuid.uuid4().hex,
        status="READY",
        chunk_count=len(embeddings),
    )
    session.add(document)
    await session.flush()
    chunks = [
        Chunk(
            document_id=document.id,
            ordinal=n,
            content=f"chunk {n}",
            token_count=2,
            embedding=embedding,
        )
        for n, embedding in enumerate(embeddings)
    ]
    session.add_all(chunks)
    await session.flush()
    return [chunk.id for chunk in chunks]


async def test_filtered_vector_search_fills_k_past_closer_unreadable_chunks(
    database_url: str, tmp_path: Path
) -> None:
    # given a small ef_search, and more of another user's chunks closer to the query than the
    # viewer's nearest k than one scan round holds
    settings = make_settings(database_url, tmp_path, search_ef_search=10)
    tuning = SearchTuning.from_settings(settings)
    dimensions = settings.embedding_dimensions
    k = 5
    state = Backend(settings=settings)
    async with connect(state), state.sessionmaker() as session:
        viewer, other = (
            User(email=f"{name}@example.com", display_name=name, password_hash="-")
            for name in ("viewer", "other")
        )
        session.add_all([viewer, other])
        await session.flush()
        rng = random.Random(7)
        query = _unit([rng.gauss(0.0, 1.0) for _ in range(dimensions)])
        # Cosine distance about 0.005 for the other user's chunks, 0.3 for the viewer's nearest.
        await _owned_chunks(session, other, [_around(query, 0.1, rng) for _ in range(80)])
        nearest = await _owned_chunks(session, viewer, [_around(query, 1.0, rng) for _ in range(k)])
        # Many far readable chunks: with only a few, the planner reads the viewer's own
        # chunks and sorts them, and the HNSW index is not used at all.
        far = [_unit([rng.gauss(0.0, 1.0) for _ in range(dimensions)]) for _ in range(1000)]
        await _owned_chunks(session, viewer, far)
        await session.commit()
        await session.execute(text("ANALYZE documents, chunks"))
        repository = SearchRepository(session)

        # when the viewer's k nearest are asked for through the index
        found = await repository.nearest_by_vector(
            viewer,
            query,
            k,
            scan=k,
            ef_search=tuning.ef_search,
            max_scan_tuples=tuning.max_scan_tuples,
        )
        exact = await repository.exact_nearest_by_vector(viewer, query, k)
        # and, as a control, the same statement with a single scan round: that it finds fewer
        # also shows the statement goes through the index (a plan without it finds all k)
        single_round = await repository._nearest(
            viewer,
            query,
            k,
            {
                "hnsw.iterative_scan": "off",
                "hnsw.ef_search": str(tuning.ef_search),
                "enable_seqscan": "off",
                "plan_cache_mode": "force_custom_plan",
            },
        )

    # then the viewer's k nearest chunks are all returned; one scan round finds fewer
    assert sorted(exact) == sorted(nearest)
    assert sorted(found) == sorted(nearest)
    assert len(single_round) < k


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _nodes(child))]


async def test_the_vector_statement_orders_every_candidate_the_scan_handed_over(
    database_url: str, tmp_path: Path
) -> None:
    # given more readable chunks than the scan is asked for
    settings = make_settings(database_url, tmp_path)
    dimensions = settings.embedding_dimensions
    state = Backend(settings=settings)
    async with connect(state), state.sessionmaker() as session:
        viewer = User(email="viewer@example.com", display_name="viewer", password_hash="-")
        session.add(viewer)
        await session.flush()
        rng = random.Random(3)
        # (as many as make the planner prefer the index to sorting the viewer's chunks)
        unit = [_unit([rng.gauss(0.0, 1.0) for _ in range(dimensions)]) for _ in range(1000)]
        await _owned_chunks(session, viewer, unit)
        await session.commit()
        await session.execute(text("ANALYZE documents, chunks"))
        query = _unit([rng.gauss(0.0, 1.0) for _ in range(dimensions)])

        # when the statement asks the HNSW scan for 60 candidates to keep the closest 5
        statement = nearest_statement(viewer, query, 5, scan=60).compile(
            session.get_bind(), compile_kwargs={"literal_binds": True}
        )
        async with SearchRepository(session)._scoped(index_scan_settings(10, 20_000)):
            plan = await session.scalar(text(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}"))
        nodes = _nodes((plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"])

    # then all 60 are read and sorted, not just enough of them to fill the 5
    [candidates] = [node for node in nodes if node["Node Type"] == "CTE Scan"]
    assert candidates["Actual Rows"] == 60
    assert any(node.get("Index Name") == "ix_chunks_embedding_hnsw" for node in nodes)
