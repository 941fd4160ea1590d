"""The lists' `search` filters use the trigram indexes, and their LIKE wildcards stay literal.

Each plan is PostgreSQL's own for the statements the repository really sends (recorded as they
are executed, then explained with the same parameters) on ten thousand rows just inserted and
ANALYZEd, with no VACUUM in between (as after a bulk import).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from ragstream.db.engine import make_engine
from ragstream.db.models.users import User
from ragstream.db.pagination import Page, PageRequest
from ragstream.db.repositories.documents import DocumentRepository
from ragstream.db.repositories.evaluations import (
    EvaluationFilter,
    EvaluationOrder,
    EvaluationRepository,
)
from ragstream.db.repositories.users import UserRepository
from ragstream.settings import Settings
from tests.documents_support import create
from tests.support import LiveServer

ROWS = 10_000
EVERY = 1_000  # one row in this many holds the searched word
TERM = "quartzite"
MATCHES = ROWS // EVERY

Recorded = list[tuple[str, Any]]


@pytest.fixture
async def engine(settings: Settings, database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url, settings)
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.contextmanager
def recorded(engine: AsyncEngine) -> Iterator[Recorded]:
    """Every statement the engine sends while the block runs, with its parameters."""
    statements: Recorded = []

    def record(
        conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


def bitmap_index_scans(node: dict[str, Any]) -> set[str]:
    found = {node["Index Name"]} if node.get("Node Type") == "Bitmap Index Scan" else set()
    for child in node.get("Plans", ()):
        found |= bitmap_index_scans(child)
    return found


async def searched_plans(session: AsyncSession, statements: Recorded) -> list[set[str]]:
    """For each recorded statement with the search predicate, the indexes its plan scans."""
    connection = await session.connection()
    scans = []
    for statement, parameters in statements:
        if "ILIKE" not in statement:
            continue
        result = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        plan = result.scalar_one()
        if isinstance(plan, str):
            plan = json.loads(plan)
        scans.append(bitmap_index_scans(plan[0]["Plan"]))
    return scans


async def seed(engine: AsyncEngine) -> uuid.UUID:
    """ROWS users, evaluations and documents; one in EVERY mentions TERM. Returns an owner."""
    async with engine.begin() as conn:
        owner = await conn.scalar(
            text(
                "INSERT INTO users (email, display_name, password_hash, role) "
                "VALUES ('owner@example.com', 'Owner', 'x', 'ADMIN') RETURNING id"
            )
        )
        values = {"owner": owner, "rows": ROWS, "every": EVERY, "word": f" {TERM.title()} "}
        await conn.execute(
            text(
                "INSERT INTO users (email, display_name, password_hash) "
                "SELECT 'user' || i || '-' || md5(i::text) || '@example.com', "
                "'Person' || (CASE WHEN i % :every = 0 THEN :word ELSE ' ' END) "
                "|| md5((i * 7)::text), 'x' "
                "FROM generate_series(1, :rows) AS i"
            ),
            values,
        )
        await conn.execute(
            text(
                "INSERT INTO evaluations (owner_id, title, company_name, project_type) "
                "SELECT :owner, 'Evaluation' "
                "|| (CASE WHEN i % :every = 0 THEN :word ELSE ' ' END) || md5(i::text), "
                "'Company ' || md5((i * 3)::text), 'OTHER' "
                "FROM generate_series(1, :rows) AS i"
            ),
            values,
        )
        await conn.execute(
            text(
                "INSERT INTO documents "
                "(owner_id, title, filename, mime_type, size_bytes, content_sha256) "
                "SELECT :owner, 'Report ' || md5((i * 5)::text), "
                "'file' || (CASE WHEN i % :every = 0 THEN :word ELSE ' ' END) "
                "|| md5(i::text) || '.txt', 'text/plain', 100, md5(i::text) || md5(i::text) "
                "FROM generate_series(1, :rows) AS i"
            ),
            values,
        )
        for table in ("users", "evaluations", "documents"):
            await conn.execute(text(f"ANALYZE {table}"))
    assert isinstance(owner, uuid.UUID)
    return owner


def admin_viewer(owner_id: uuid.UUID) -> User:
    return User(id=owner_id, email="owner@example.com", display_name="Owner", role="ADMIN")


async def searches(session: AsyncSession, viewer: User, term: str) -> list[Page[Any]]:
    """One page of each list filtered by ``term``, through the repositories."""
    request = PageRequest(first=20)
    return [
        await EvaluationRepository(session, viewer).page(
            request, EvaluationFilter(search=term), EvaluationOrder()
        ),
        await DocumentRepository(session).list_visible(viewer, request, search=term),
        await UserRepository(session).list(request, search=term),
    ]


async def test_list_searches_are_planned_on_the_trigram_indexes_for_each_term(
    engine: AsyncEngine,
) -> None:
    viewer = admin_viewer(await seed(engine))

    async with AsyncSession(engine) as session:
        with recorded(engine) as statements:
            pages = await searches(session, viewer, TERM.upper())
        plans = await searched_plans(session, statements)
        # Many searches on one connection, most with terms no trigram index can answer.
        for term in ("pe", "7", "%", "ab", "x_", "a", "e1", "zz", TERM, "Person"):
            await searches(session, viewer, term)
        prepared = [
            (generic, custom)
            for statement, generic, custom in await session.execute(
                text("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
            )
            if "ILIKE" in statement and statement.startswith("SELECT")
        ]
        await session.commit()
        mode_afterwards = await session.scalar(text("SHOW plan_cache_mode"))

    assert [(p.total_count, len(p.items)) for p in pages] == [(MATCHES, MATCHES)] * 3
    # Each list's count and page, each a BitmapOr over its two searched columns' indexes.
    assert plans == [
        {"ix_evaluations_title_trgm", "ix_evaluations_company_name_trgm"},
        {"ix_evaluations_title_trgm", "ix_evaluations_company_name_trgm"},
        {"ix_documents_title_trgm", "ix_documents_filename_trgm"},
        {"ix_documents_title_trgm", "ix_documents_filename_trgm"},
        {"ix_users_email_trgm", "ix_users_display_name_trgm"},
        {"ix_users_email_trgm", "ix_users_display_name_trgm"},
    ]
    # Prepared once per connection, planned for each term: never a generic plan.
    assert len(prepared) == 6
    assert set(prepared) == {(0, 11)}
    assert mode_afterwards == "auto"  # SET LOCAL: only the searching transaction


async def test_document_search_matches_like_wildcards_literally(server: LiveServer) -> None:
    account = await server.register()
    for title in ("Budget 100% final", "under_score notes", "plain title 1000"):
        (await create(server, account.access_token, f"Body of {title}", title=title)).ok()
    query = """query($search: String) {
      documents(first: 10, filter: {search: $search}) { totalCount edges { node { title } } }
    }"""

    async def search(term: str) -> set[str]:
        result = await server.execute(query, {"search": term}, token=account.access_token)
        return {e["node"]["title"] for e in result.ok()["documents"]["edges"]}

    assert await search("%") == {"Budget 100% final"}
    assert await search("_") == {"under_score notes"}
    assert await search("100") == {"Budget 100% final", "plain title 1000"}
    assert await search("10_") == set()  # "100" would match if _ were a wildcard
    assert await search("0%") == {"Budget 100% final"}
    assert await search("\\") == set()
