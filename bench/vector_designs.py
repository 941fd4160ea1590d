"""The vector-search designs pgvector offers, measured against the exact top 10 and against
ragstream's own vector statement (HNSW, iterative scan, exact re-ranking).

Usage: python -m bench.vector_designs [--chunks 100000] [--queries 60]
           [--binary-candidates 400 3200] [--simhash-candidates 600 800 1600]
           [--simhash-bits 1024] [--ivfflat-probes 8 32] [--parallel 1 2]
           [--no-hnsw] [--no-halfvec-hnsw] [--server NAME=VALUE ...]

The chunks are the topical synthetic passages of bench.search (the offline hashing embedder,
COPY, the viewer owns half the documents). Each design answers every question for the 60
closest readable chunks, as the vector side of search does; recall@10 is its first 10 against
the exact scan of the full vectors (ragstream's exact statement). The designs run in turn for
each question (interleaved rounds) on one connection, without parallel workers unless their
name says so. The CPU time of every process of the (private) PostgreSQL server is read from
/proc around each statement, parallel workers included (a worker's time is counted once the
postmaster has reaped it, which happens as the statement ends):

- *HNSW (default)*: ragstream's statement, through the repository, with the default settings.
- *HNSW over halfvec, exact re-rank*: the same statement, settings and path (the repository's
  settings and driver statement), but the candidates come from an HNSW index over the 16-bit
  form of the embeddings (an expression index, ``embedding::halfvec(384)``, built with the
  migration's m and ef_construction); they are still ordered by the full vectors' distance.
  Its insert cost is the COPY with that index alone (ragstream's index dropped meanwhile).
- *exact halfvec*: every readable chunk compared, on a narrow table of 16-bit vectors.
- *exact halfvec, leader + N workers*: the same statement split over N parallel workers and
  the backend itself (``--parallel``; parallel plans made free so the planner takes them).
- *binary K, re-ranked*: the K readable chunks closest by Hamming distance of
  ``binary_quantize(embedding)`` (an exact scan of the 48-byte codes: an index over them can
  only find fewer of the true ones), then ordered by the full vectors' cosine distance.
- *SimHash B bits, K re-ranked*: the K readable chunks closest by Hamming distance of
  random-hyperplane codes (the signs of B fixed Gaussian projections of the embedding, computed
  with numpy; Hamming distance between them estimates the angle between the vectors), in a
  narrow table scanned exactly, then ordered by the full vectors' cosine distance. Unlike
  ``binary_quantize`` (the sign of each component, mostly the zero components of a short
  question's sparse vector) these codes follow the cosine. Build and insert include the
  projection.
- *ivfflat P of L lists*: an IVFFlat index on the narrow 16-bit table, P lists probed
  (iterative scan, so the viewer's filter still yields 60 rows).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np
from asyncpg import BitString
from pgvector.asyncpg import register_vector
from pgvector.sqlalchemy import HALFVEC as HalfvecType
from rich.console import Console
from rich.table import Table
from sqlalchemy import Float, Select, cast, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.sql.elements import BindParameter, ColumnElement

from bench.common import embedded_database, percentile
from bench.search import (
    TopicalCorpus,
    backend_cpu_ms,
    insert_cost,
    load_chunks,
    server_parameters,
)
from ragstream.db.driver import DriverStatement
from ragstream.db.models.documents import Chunk
from ragstream.db.models.users import User
from ragstream.db.repositories.documents import HnswOptions
from ragstream.db.repositories.search import (
    SearchRepository,
    index_scan_settings,
    nearest_select,
    nearest_statement,
    vector_literal,
)
from ragstream.domain.llm.embeddings import HashingEmbedder
from ragstream.domain.retrieval.service import SearchTuning

CANDIDATES = 60  # what the vector side of search keeps
K = 10
READABLE = "(d.owner_id = CAST(:viewer AS uuid) OR d.visibility = 'SHARED')"
HALFVEC = (
    "SELECT h.id FROM bench_halfvecs h JOIN documents d ON d.id = h.document_id"  # noqa: S608
    f" WHERE {READABLE} ORDER BY h.embedding <=> CAST(CAST(:q AS text) AS halfvec), h.id"
    " LIMIT :limit"
)
BINARY = (
    "WITH candidates AS MATERIALIZED ("  # noqa: S608
    " SELECT b.id FROM bench_bits b JOIN documents d ON d.id = b.document_id"
    f" WHERE {READABLE}"
    " ORDER BY b.bits <~> binary_quantize(CAST(CAST(:q AS text) AS vector)) LIMIT :scan)"
    " SELECT c.id FROM chunks c JOIN candidates USING (id)"
    " ORDER BY c.embedding <=> CAST(CAST(:q AS text) AS vector), c.id LIMIT :limit"
)
SIMHASH = (
    "WITH candidates AS MATERIALIZED ("  # noqa: S608
    " SELECT b.id FROM bench_simhash b JOIN documents d ON d.id = b.document_id"
    f" WHERE {READABLE}"
    " ORDER BY b.code <~> CAST(CAST(:code AS text) AS bit({bits})) LIMIT :scan)"
    " SELECT c.id FROM chunks c JOIN candidates USING (id)"
    " ORDER BY c.embedding <=> CAST(CAST(:q AS text) AS vector), c.id LIMIT :limit"
)
SIMHASH_SEED = 20261201
# No parallel workers (the backend's CPU time is then all of it), and a plan made for each
# statement with the settings of the moment: the exact and the ivfflat designs send the same
# SQL, and a cached generic plan would not see their different planner settings.
HALFVEC_INSERT = (
    "INSERT INTO bench_halfvecs SELECT id, document_id, CAST(embedding AS halfvec(384))"
    " FROM chunks LIMIT 1000"
)
SERIAL = {"max_parallel_workers_per_gather": "0", "plan_cache_mode": "force_custom_plan"}
DIMENSIONS = 384
HALFVEC_HNSW_INDEX = "bench_chunks_halfvec_hnsw"


def halfvec_nearest() -> Select[tuple[uuid.UUID]]:
    """ragstream's vector statement (`search.nearest_select`: same readable filter, same bind
    parameters) with the candidates scanned by the distance of the 16-bit vectors, which the
    expression index ``HALFVEC_HNSW_INDEX`` orders, then kept by the full vectors' distance."""

    def by_halfvec(vector: BindParameter[str]) -> ColumnElement[float]:
        halfvec = HalfvecType(DIMENSIONS)
        return cast(Chunk.embedding, halfvec).op("<=>", return_type=Float)(cast(vector, halfvec))

    return nearest_select(by_halfvec)


HALFVEC_NEAREST = halfvec_nearest()
_HALFVEC_NEAREST = DriverStatement(HALFVEC_NEAREST)


def parallel(workers: int) -> dict[str, str]:
    """Settings under which the planner splits a scan of the narrow table over ``workers``."""
    return {
        "max_parallel_workers_per_gather": str(workers),
        "parallel_setup_cost": "0",
        "parallel_tuple_cost": "0",
        "min_parallel_table_scan_size": "0",
    }


Search = Callable[[list[float]], Awaitable[list[uuid.UUID]]]


@dataclass
class Design:
    name: str
    build_s: float
    insert_ms: float  # per chunk: COPY into chunks plus what the design adds
    run: Search
    recalls: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # the backend's
    server_cpu_ms: list[float] = field(default_factory=list)  # every server process's


@contextlib.asynccontextmanager
async def scoped(session: AsyncSession, settings: dict[str, str]) -> AsyncIterator[None]:
    """``settings`` (SET LOCAL) for the block only, undone by rolling back a savepoint."""
    savepoint = await session.begin_nested()
    try:
        for name, value in settings.items():
            await session.execute(
                text("SELECT set_config(:name, :value, true)"), {"name": name, "value": value}
            )
        yield
    finally:
        await savepoint.rollback()


async def timed_ddl(conn: asyncpg.Connection, *statements: str) -> float:
    started = time.perf_counter()
    for statement in statements:
        await conn.execute(statement)
    return time.perf_counter() - started


async def side_insert_ms(conn: asyncpg.Connection, statement: str) -> float:
    """Milliseconds per row of adding 1,000 chunks' rows to a design's table (rolled back)."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        started = time.perf_counter()
        await conn.execute(statement)
        return (time.perf_counter() - started) * 1000 / 1000
    finally:
        await transaction.rollback()


async def run(args: argparse.Namespace) -> None:
    corpus = TopicalCorpus(random.Random(11))
    embedder = HashingEmbedder(384)
    async with embedded_database(args.server) as (database, name, _data_dir):
        conn = await asyncpg.connect(database.libpq_uri(name))
        await register_vector(conn)
        owners = [uuid.uuid4(), uuid.uuid4()]
        for number, owner in enumerate(owners):
            await conn.execute(
                "INSERT INTO users (id, email, display_name, password_hash)"
                " VALUES ($1, $2, 'Bench', 'not a hash')",
                owner,
                f"bench-{number}@example.com",
            )
        await conn.execute("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw")
        embedded, copied = await load_chunks(conn, embedder, owners, args.chunks, corpus)
        print(
            f"{args.chunks:,} chunks: embedded in {embedded:.0f} s, copied in {copied:.0f} s",
            flush=True,
        )
        await conn.execute("VACUUM ANALYZE chunks")
        await conn.execute("ANALYZE documents")
        copy_ms = await insert_cost(conn, embedder, owners, corpus)
        engine = create_async_engine(database.url(name))
        try:
            async with AsyncSession(engine) as session:
                designs = await build_designs(
                    args, conn, session, owners[0], copy_ms, embedder, corpus
                )
                questions = [corpus.question() for _ in range(args.queries)]
                if not args.no_halfvec_hnsw:
                    [vector] = embedder.embed_sync(questions[:1])
                    plan = await explain_halfvec_hnsw(
                        session, owners[0], vector, with_default_index=not args.no_hnsw
                    )
                    print(plan, flush=True)
                for design in designs:
                    print(f"{design.name}: built in {design.build_s:.1f} s", flush=True)
                load = await measure(session, designs, questions, owners[0], embedder)
        finally:
            await engine.dispose()
            await conn.close()
    print_table(designs, args.chunks, load)


async def build_designs(
    args: argparse.Namespace,
    conn: asyncpg.Connection,
    session: AsyncSession,
    viewer_id: uuid.UUID,
    copy_ms: float,
    embedder: HashingEmbedder,
    corpus: TopicalCorpus,
) -> list[Design]:
    viewer = await session.get(User, viewer_id)
    assert viewer is not None
    repo = SearchRepository(session)
    defaults = SearchTuning()
    designs: list[Design] = []

    def statement(
        sql: str,
        settings: dict[str, str],
        derived: Callable[[list[float]], dict[str, object]] | None = None,
        **extra: int,
    ) -> Search:
        """A design's statement for the viewer, run with ``settings`` (and parameters
        ``derived`` from the question's vector)."""

        async def run(vector: list[float]) -> list[uuid.UUID]:
            params: dict[str, object] = {
                "q": vector_literal(vector),
                "viewer": str(viewer_id),
                "limit": CANDIDATES,
                **extra,
                **(derived(vector) if derived else {}),
            }
            async with scoped(session, {**SERIAL, **settings}):
                return list(await session.scalars(text(sql), params))

        return run

    if not args.no_hnsw:
        options = HnswOptions()
        build_s = await timed_ddl(
            conn,
            "SET maintenance_work_mem = '1GB'",
            "CREATE INDEX ix_chunks_embedding_hnsw ON chunks USING hnsw"
            f" (embedding vector_cosine_ops) WITH (m = {options.m},"
            f" ef_construction = {options.ef_construction})",
        )

        async def hnsw(vector: list[float]) -> list[uuid.UUID]:
            return await repo.nearest_by_vector(
                viewer,
                vector,
                CANDIDATES,
                scan=defaults.scan,
                ef_search=defaults.ef_search,
                max_scan_tuples=defaults.max_scan_tuples,
            )

        hnsw_insert = await insert_cost(conn, embedder, [viewer_id], corpus)
        designs.append(
            Design(
                f"HNSW (default: {CANDIDATES} of {defaults.scan}, ef_search {defaults.ef_search})",
                build_s,
                hnsw_insert,
                hnsw,
            )
        )
    if not args.no_halfvec_hnsw:
        options = HnswOptions()  # the migration's m and ef_construction
        build_s = await timed_ddl(
            conn,
            "SET maintenance_work_mem = '1GB'",
            f"CREATE INDEX {HALFVEC_HNSW_INDEX} ON chunks USING hnsw"
            f" ((CAST(embedding AS halfvec({DIMENSIONS}))) halfvec_cosine_ops)"
            f" WITH (m = {options.m}, ef_construction = {options.ef_construction})",
        )
        halfvec_hnsw_insert = await insert_cost_without_default_index(
            conn, embedder, viewer_id, corpus
        )
        settings = index_scan_settings(defaults.ef_search, defaults.max_scan_tuples)

        async def halfvec_hnsw(vector: list[float]) -> list[uuid.UUID]:
            # As `SearchRepository.nearest_by_vector` runs its statement: the same settings,
            # set and reset the same way, and the statement on the driver's connection.
            params = {
                "viewer_id": viewer_id,
                "vector": vector_literal(vector),
                "k": CANDIDATES,
                "scan": max(defaults.scan, CANDIDATES),
            }
            async with repo._scoped(settings):
                rows = await _HALFVEC_NEAREST.fetch(session, params)
            return [row[0] for row in rows]

        designs.append(
            Design(
                "HNSW over halfvec, exact re-rank (same settings)",
                build_s,
                halfvec_hnsw_insert,
                halfvec_hnsw,
            )
        )
    build_s = await timed_ddl(
        conn,
        "CREATE TABLE bench_halfvecs AS SELECT id, document_id,"
        " CAST(embedding AS halfvec(384)) AS embedding FROM chunks",
        "VACUUM ANALYZE bench_halfvecs",
    )
    halfvec_insert = await side_insert_ms(
        conn,
        HALFVEC_INSERT,
    )

    designs.append(
        Design(
            "exact halfvec",
            build_s,
            copy_ms + halfvec_insert,
            statement(HALFVEC, {"enable_indexscan": "off"}),
        )
    )
    for workers in args.parallel:
        designs.append(
            Design(
                f"exact halfvec, leader + {workers} workers",
                build_s,
                copy_ms + halfvec_insert,
                statement(HALFVEC, {"enable_indexscan": "off", **parallel(workers)}),
            )
        )
    build_s = await timed_ddl(
        conn,
        "CREATE TABLE bench_bits AS SELECT id, document_id,"
        " CAST(binary_quantize(embedding) AS bit(384)) AS bits FROM chunks",
        "VACUUM ANALYZE bench_bits",
    )
    bits_insert = await side_insert_ms(
        conn,
        "INSERT INTO bench_bits SELECT id, document_id,"
        " CAST(binary_quantize(embedding) AS bit(384)) FROM chunks LIMIT 1000",
    )
    for scan in args.binary_candidates:
        designs.append(
            Design(
                f"binary {scan}, re-ranked",
                build_s,
                copy_ms + bits_insert,
                statement(BINARY, {}, scan=scan),
            )
        )
    if args.simhash_candidates:
        codes = SimHash(args.simhash_bits)
        build_s = await codes.build(conn)
        simhash_insert = await codes.insert_ms(conn)
        sql = SIMHASH.replace("{bits}", str(codes.bits))
        for scan in args.simhash_candidates:
            designs.append(
                Design(
                    f"SimHash {codes.bits} bits, {scan} re-ranked",
                    build_s,
                    copy_ms + simhash_insert,
                    statement(sql, {}, lambda v: {"code": codes.text(v)}, scan=scan),
                )
            )
    if args.ivfflat_probes:
        lists = max(10, int(args.chunks**0.5))
        build_s = await timed_ddl(
            conn,
            "SET maintenance_work_mem = '1GB'",
            "CREATE INDEX bench_halfvecs_ivfflat ON bench_halfvecs USING ivfflat"
            f" (embedding halfvec_cosine_ops) WITH (lists = {lists})",
        )
        ivf_insert = await side_insert_ms(
            conn,
            HALFVEC_INSERT,
        )
        for probes in args.ivfflat_probes:
            settings = {
                "ivfflat.probes": str(probes),
                "ivfflat.iterative_scan": "relaxed_order",
                "enable_seqscan": "off",
            }
            designs.append(
                Design(
                    f"ivfflat {probes} of {lists} lists",
                    build_s,
                    copy_ms + ivf_insert,
                    statement(HALFVEC, settings),
                )
            )
    await conn.execute("ANALYZE")
    return designs


class SimHash:
    """Random-hyperplane codes of the embeddings: bit i is whether the vector lies on the
    positive side of the i-th of ``bits`` fixed Gaussian directions."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        generator = np.random.default_rng(SIMHASH_SEED)
        self.planes = generator.standard_normal((DIMENSIONS, bits)).astype(np.float32)

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        return np.packbits((vectors @ self.planes) > 0, axis=1)

    def text(self, vector: list[float]) -> str:
        signs = np.asarray(vector, dtype=np.float32) @ self.planes > 0
        return "".join("1" if bit else "0" for bit in signs)

    async def _copy(self, conn: asyncpg.Connection, limit: int | None) -> None:
        rows = await conn.fetch(
            "SELECT id, document_id, embedding FROM chunks ORDER BY id LIMIT $1", limit
        )
        for start in range(0, len(rows), 50_000):
            batch = rows[start : start + 50_000]
            packed = self.codes(np.stack([row["embedding"].to_numpy() for row in batch]))
            await conn.copy_records_to_table(
                "bench_simhash",
                records=[
                    (row["id"], row["document_id"], BitString.frombytes(code.tobytes(), self.bits))
                    for row, code in zip(batch, packed, strict=True)
                ],
            )

    async def build(self, conn: asyncpg.Connection) -> float:
        """The table of every chunk's code; returns the seconds it took."""
        started = time.perf_counter()
        await conn.execute(
            "CREATE TABLE bench_simhash (id uuid NOT NULL, document_id uuid NOT NULL,"
            f" code bit({self.bits}) NOT NULL)"
        )
        await self._copy(conn, None)
        await conn.execute("VACUUM ANALYZE bench_simhash")
        return time.perf_counter() - started

    async def insert_ms(self, conn: asyncpg.Connection) -> float:
        """Milliseconds per chunk of reading, projecting and adding 1,000 chunks' codes (the
        rows are added a second time, then rolled back)."""
        transaction = conn.transaction()
        await transaction.start()
        try:
            started = time.perf_counter()
            await self._copy(conn, 1000)
            return (time.perf_counter() - started) * 1000 / 1000
        finally:
            await transaction.rollback()


async def insert_cost_without_default_index(
    conn: asyncpg.Connection, embedder: HashingEmbedder, viewer_id: uuid.UUID, corpus: TopicalCorpus
) -> float:
    """`insert_cost` with ragstream's HNSW index dropped meanwhile (rolled back): what a
    chunk pays when the halfvec index replaces it."""
    transaction = conn.transaction()
    await transaction.start()
    try:
        await conn.execute("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw")
        return await insert_cost(conn, embedder, [viewer_id], corpus)
    finally:
        await transaction.rollback()


def literal_sql(session: AsyncSession, statement: Select[tuple[uuid.UUID]]) -> str:
    """``statement`` with its values written into the SQL, for EXPLAIN."""
    dialect = session.get_bind().dialect
    return str(statement.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


async def explain_halfvec_hnsw(
    session: AsyncSession, viewer_id: uuid.UUID, vector: list[float], *, with_default_index: bool
) -> str:
    """The plan (EXPLAIN ANALYZE) of the halfvec design's statement for one question, under
    its settings, with the values in the SQL (the custom plan the parameters get); fails
    unless the candidates come from the halfvec index and are ordered by the full vectors'
    distance. Also says whether ragstream's own statement takes its own index (if built)."""
    defaults = SearchTuning()
    values = {
        "viewer_id": viewer_id,
        "vector": vector_literal(vector),
        "k": CANDIDATES,
        "scan": max(defaults.scan, CANDIDATES),
    }
    settings = {
        "max_parallel_workers_per_gather": "0",
        **index_scan_settings(defaults.ef_search, defaults.max_scan_tuples),
    }
    async with scoped(session, settings):
        rows = await session.execute(
            text(
                "EXPLAIN (ANALYZE, VERBOSE, BUFFERS, COSTS OFF) "
                + literal_sql(session, HALFVEC_NEAREST.params(values))
            )
        )
        plan = "\n".join(row[0] for row in rows)
        default = await session.execute(
            text(
                "EXPLAIN (COSTS OFF) "
                + literal_sql(session, nearest_statement_for(viewer_id, vector))
            )
        )
        default_plan = "\n".join(row[0] for row in default)
    plan = re.sub(r"'\[[^\]]*\]'", "'[...]'", plan)  # the 384 numbers of the question
    assert f"Index Scan using {HALFVEC_HNSW_INDEX} on public.chunks" in plan, plan
    assert "ix_chunks_embedding_hnsw" not in plan, plan
    assert "Sort Key: ((candidates.distance + '0'::double precision)), candidates.id" in plan, plan
    assert "(chunks.embedding <=> '[...]'::vector)" in plan, plan  # the full-precision distance
    report = f"plan of the halfvec HNSW statement (first question):\n{plan}"
    if with_default_index:
        # (A small table may leave it: the planner then sorts a few documents' chunks.)
        uses = "Index Scan using ix_chunks_embedding_hnsw" in default_plan
        report += f"\nragstream's statement through ix_chunks_embedding_hnsw: {uses}"
    return report


def nearest_statement_for(viewer_id: uuid.UUID, vector: list[float]) -> Select[tuple[uuid.UUID]]:
    """ragstream's vector statement as `nearest_by_vector` sends it with the defaults."""
    viewer = User(id=viewer_id)
    return nearest_statement(viewer, vector, CANDIDATES, scan=max(SearchTuning().scan, CANDIDATES))


async def measure(
    session: AsyncSession,
    designs: list[Design],
    questions: list[str],
    viewer_id: uuid.UUID,
    embedder: HashingEmbedder,
) -> tuple[float, float]:
    """Every design over every question, in turn per question; returns the 1-minute load
    average before and after."""
    viewer = await session.get(User, viewer_id)
    assert viewer is not None
    repo = SearchRepository(session)
    backend = int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
    postmaster = parent_pid(backend)
    await session.execute(text("SET max_parallel_workers_per_gather = 0"))
    vectors = embedder.embed_sync(questions)
    for design in designs:  # warm-up: caches, plans
        for vector in vectors[:3]:
            await design.run(vector)
    before = os.getloadavg()[0]
    for vector in vectors:
        truth = set(await repo.exact_nearest_by_vector(viewer, vector, K))
        for design in designs:
            server = server_cpu_ms(postmaster)
            cpu = backend_cpu_ms(backend)
            started = time.perf_counter()
            found = await design.run(vector)
            design.wall_ms.append((time.perf_counter() - started) * 1000)
            design.cpu_ms.append(backend_cpu_ms(backend) - cpu)
            design.server_cpu_ms.append(server_cpu_ms(postmaster) - server)
            design.recalls.append(len(set(found[:K]) & truth) / K)
    return before, os.getloadavg()[0]


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def parent_pid(pid: int) -> int:
    return int(_stat(pid)[1])


def server_cpu_ms(postmaster: int) -> float:
    """CPU time used so far by the postmaster, its live child processes (backends, parallel
    workers, background processes) and the children it has reaped (exited parallel workers)."""
    fields = _stat(postmaster)
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = _stat(int(entry.name))
        except (FileNotFoundError, ProcessLookupError):  # exited meanwhile
            continue
        if int(child[1]) == postmaster:
            ticks += int(child[11]) + int(child[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def print_table(designs: list[Design], chunks: int, load: tuple[float, float]) -> None:
    table = Table(
        title=f"vector-search designs at {chunks:,} chunks (topical corpus, hashing embedder, "
        f"384 dimensions; the viewer reads half the chunks; {CANDIDATES} rows per question; "
        f"load average {load[0]:.1f}-{load[1]:.1f}; "
        f"{os.cpu_count()} CPUs)"
    )
    for column in (
        "design",
        "build s",
        "insert ms/chunk",
        "recall@10",
        "statement p50 ms",
        "backend CPU ms",
        "server CPU ms",
        "CPU vs first row",
    ):
        table.add_column(column, justify="right")
    peer = sum(designs[0].server_cpu_ms) / len(designs[0].server_cpu_ms)
    for design in designs:
        cpu = sum(design.cpu_ms) / len(design.cpu_ms)
        server = sum(design.server_cpu_ms) / len(design.server_cpu_ms)
        table.add_row(
            design.name,
            f"{design.build_s:.1f}",
            f"{design.insert_ms:.2f}",
            f"{sum(design.recalls) / len(design.recalls):.3f}",
            f"{percentile(design.wall_ms, 50):.1f}",
            f"{cpu:.1f}",
            f"{server:.1f}",
            f"{server / peer:.2f}x" if peer else "",
        )
    console = Console(width=max(Console().width, 160))
    console.print(table)
    console.print(
        "recall@10: the first 10 of the 60 rows against the exact scan of the full vectors. "
        "backend CPU ms: mean CPU time of the PostgreSQL backend per statement (/proc), which "
        "competing processes hardly change; server CPU ms: of every server process, parallel "
        "workers included (what 'CPU vs first row' compares). insert ms/chunk: COPY of 1,000 "
        "chunks into `chunks` (with the HNSW index for the first row, with the halfvec HNSW "
        "index alone for its row, without either for the others) plus adding their rows to the "
        "design's own table. build s: the index or the table."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--binary-candidates", type=int, nargs="*", default=[400, 3200])
    parser.add_argument(
        "--simhash-candidates",
        type=int,
        nargs="*",
        default=[600, 800, 1600],
        help="candidates the SimHash design re-ranks (none: leave it out)",
    )
    parser.add_argument("--simhash-bits", type=int, default=1024)
    parser.add_argument("--ivfflat-probes", type=int, nargs="*", default=[8, 32])
    parser.add_argument(
        "--parallel",
        type=int,
        nargs="*",
        default=[1, 2],
        metavar="WORKERS",
        help="also run the exact halfvec scan with this many parallel workers besides the backend",
    )
    parser.add_argument(
        "--no-hnsw",
        action="store_true",
        help="leave out ragstream's HNSW statement (its build is the long part at 1M chunks)",
    )
    parser.add_argument(
        "--no-halfvec-hnsw",
        action="store_true",
        help="leave out the HNSW index over the 16-bit vectors (another long build)",
    )
    parser.add_argument("--server", nargs="*", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    args.server = server_parameters(parser, args.server)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
