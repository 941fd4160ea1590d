"""Latency of the evaluation list's `search` filter, with and without the trigram indexes.

Usage: python -m bench.list_search [--evaluations 50000] [--owners 50] [--repeat 20]

Seeds evaluations (titles and company names from a word list, a few rare words) into a
throwaway embedded PostgreSQL, vacuums and analyzes, then times the statements
`EvaluationRepository.page` sends for one page of 20 (the total count and the page) for several
search terms, with the migration's trigram indexes and without them (dropped in a transaction
that is rolled back), alternating round by round. "admin" lists everyone's evaluations (the
full-scan case); "owner" lists one owner's, which its owner index already narrows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from rich.console import Console
from rich.table import Table
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from bench.common import bench_settings, embedded_database, percentile
from ragstream.db.engine import make_engine
from ragstream.db.models.users import User
from ragstream.db.pagination import PageRequest
from ragstream.db.repositories.evaluations import (
    EvaluationFilter,
    EvaluationOrder,
    EvaluationRepository,
)

INDEXES = ("ix_evaluations_title_trgm", "ix_evaluations_company_name_trgm")
_WORDS = """acme global northern united pacific alpine summit harbor coastal metro precision
    dynamic prime atlas vertex sterling granite cedar maple river"""
WORDS = _WORDS.split()
_SECTORS = "Manufacturing Logistics Foods Textiles Chemicals Motors Plastics Retail"
SECTORS = _SECTORS.split()
PROJECTS = ("ERP selection", "ERP migration", "ERP upgrade", "Finance rollout", "MES review")
RARE = "quartzite"  # in one company name per thousand
TERMS = (
    (RARE, "rare word (0.1%)"),
    ("Logistics", "common word (~12%)"),
    ("atlas mot", "phrase across words"),
    ("zzyzx", "no match"),
    ("pa", "2 characters"),
)


@dataclass(frozen=True)
class Timing:
    matches: int
    p50_ms: float
    plan: str


def company(rng: random.Random, i: int) -> str:
    name = f"{rng.choice(WORDS).title()} {rng.choice(SECTORS)}"
    return f"{name} {RARE.title()}" if i % 1000 == 0 else name


async def seed(dsn: str, evaluations: int, owners: int) -> list[uuid.UUID]:
    rng = random.Random(7)
    owner_ids = [uuid.uuid4() for _ in range(owners)]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "users",
            records=[
                (owner, f"owner{i}@example.com", f"Owner {i}", "x")
                for i, owner in enumerate(owner_ids)
            ],
            columns=["id", "email", "display_name", "password_hash"],
        )
        rows = []
        for i in range(evaluations):
            name = company(rng, i)
            title = f"{rng.choice(PROJECTS)} for {name} {rng.randint(2020, 2027)}"
            rows.append((owner_ids[i % owners], title[:200], name, "OTHER"))
        await conn.copy_records_to_table(
            "evaluations",
            records=rows,
            columns=["owner_id", "title", "company_name", "project_type"],
        )
        # The steady state autovacuum keeps: visibility map set, GIN statistics current.
        await conn.execute("VACUUM ANALYZE users")
        await conn.execute("VACUUM ANALYZE evaluations")
    finally:
        await conn.close()
    return owner_ids


def scan_summary(plan: dict[str, object]) -> set[str]:
    found: set[str] = set()
    kind = plan.get("Node Type")
    if kind == "Bitmap Index Scan" and plan.get("Index Name") in INDEXES:
        found.add("trigram")
    elif kind in ("Seq Scan", "Index Scan", "Index Scan Backward", "Bitmap Index Scan"):
        found.add(f"{kind} {plan.get('Index Name', '')}".strip())
    children = plan.get("Plans", [])
    assert isinstance(children, list)
    for child in children:
        found |= scan_summary(child)
    return found


@contextlib.asynccontextmanager
async def session(engine: AsyncEngine, *, indexed: bool) -> AsyncIterator[AsyncSession]:
    """A session on one connection; without the indexes, they are dropped in a transaction
    that is rolled back afterwards, so both variants run on the same data and statistics."""
    async with engine.connect() as conn:
        await conn.begin()
        if not indexed:
            for index in INDEXES:
                await conn.execute(text(f"DROP INDEX {index}"))
        try:
            async with AsyncSession(bind=conn) as db:
                yield db
        finally:
            await conn.rollback()


async def time_search(
    engine: AsyncEngine, viewer: User, term: str, repeat: int
) -> dict[bool, Timing]:
    """Both variants, alternating round by round so a change in machine load hits both."""
    statements: list[tuple[str, Any]] = []

    def record(
        conn: Connection, cursor: Any, statement: str, params: Any, ctx: Any, many: bool
    ) -> None:
        statements.append((statement, params))

    durations: dict[bool, list[float]] = {True: [], False: []}
    matches = 0
    for attempt in range(repeat + 1):
        for indexed in (True, False):
            if attempt == 0 and indexed:
                event.listen(engine.sync_engine, "before_cursor_execute", record)
            async with session(engine, indexed=indexed) as db:
                started = time.perf_counter()
                page = await EvaluationRepository(db, viewer).page(
                    PageRequest(first=20), EvaluationFilter(search=term), EvaluationOrder()
                )
                elapsed = time.perf_counter() - started
            if attempt == 0:  # a warm-up round, which also records the statements
                if indexed:
                    event.remove(engine.sync_engine, "before_cursor_execute", record)
                assert page.total_count is not None  # counted: PageRequest counts by default
                matches = page.total_count
            else:
                durations[indexed].append(elapsed)
    timings = {}
    for indexed in (True, False):
        scans: set[str] = set()
        async with session(engine, indexed=indexed) as db:
            conn = await db.connection()
            for statement, params in statements:
                if "ILIKE" not in statement:  # the SET LOCAL before them
                    continue
                result = await conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params)
                plan = result.scalar_one()
                if isinstance(plan, str):
                    plan = json.loads(plan)
                scans |= scan_summary(plan[0]["Plan"])
        timings[indexed] = Timing(
            matches, percentile(durations[indexed], 50) * 1000, ", ".join(sorted(scans))
        )
    return timings


async def run(evaluations: int, owners: int, repeat: int) -> None:
    console = Console(width=150)  # the table stays whole when piped to a file
    async with embedded_database() as (database, name, data_dir):
        url = database.url(name)
        started = time.perf_counter()
        owner_ids = await seed(database.libpq_uri(name), evaluations, owners)
        console.print(
            f"seeded {evaluations:,} evaluations in {time.perf_counter() - started:.1f} s"
        )
        engine = make_engine(url, bench_settings(url, data_dir))
        viewers = [
            ("admin", User(id=uuid.uuid4(), email="a@example.com", display_name="A", role="ADMIN")),
            ("owner", User(id=owner_ids[0], email="o@example.com", display_name="O", role="USER")),
        ]
        try:
            timings = {
                (who, term): await time_search(engine, viewer, term, repeat)
                for who, viewer in viewers
                for term, _ in TERMS
            }
        finally:
            await engine.dispose()

    table = Table(
        title=f"evaluations(search:) at {evaluations:,} evaluations, {owners} owners "
        f"(count + page of 20, p50 of {repeat})"
    )
    for column in ("viewer", "term", "matches", "trigram ms", "plan", "no index ms", "plan "):
        table.add_column(
            column, justify="right" if "ms" in column or column == "matches" else "left"
        )
    for who, _ in viewers:
        for term, label in TERMS:
            a, b = timings[(who, term)][True], timings[(who, term)][False]
            table.add_row(
                who,
                f"{term!r} {label}",
                f"{a.matches:,}",
                f"{a.p50_ms:.1f}",
                a.plan,
                f"{b.p50_ms:.1f}",
                b.plan,
            )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evaluations", type=int, default=50_000)
    parser.add_argument("--owners", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(run(args.evaluations, args.owners, args.repeat))


if __name__ == "__main__":
    main()
