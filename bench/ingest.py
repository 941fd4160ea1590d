"""Ingestion throughput end to end: createDocument over HTTP -> job -> parse/chunk/embed/store.

Usage: python -m bench.ingest [--documents 50] [--sections 8] [--concurrency 2] [--rounds 5]
Loopback only; uses a throwaway embedded PostgreSQL and the offline hashing embedder.

The floor, measured in the same run: ragstream's own parse, chunk and embed code in one
thread, then one binary COPY per document (the payload ragstream's jobs send) into a table
with the same indexes as ``chunks``.

ragstream runs as `ragstream serve` in its own process (its in-process worker, the offline
embedder), as it is deployed; the bench process is its client and the floor. Both contestants
meet the same conditions in every round. Inserting into an HNSW index costs
more the larger the index is (while it is small, nearly linearly), so the round starts with
both tables emptied (TRUNCATE) and a CHECKPOINT; before each contestant the bench waits until
the database is idle (no unfinished document or job, no other active backend, autovacuum
included). The order alternates; a first warm-up round (the work pool's processes start, the
vocabulary is learned) is printed but left out of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table

from bench.common import embedded_database, graphql, register, serve_process
from bench.queries import _server_env, free_port, wait_ready
from ragstream.db.chunk_copy import CHUNK_COPY_COLUMNS, chunk_copy_payload
from ragstream.domain.documents.chunking import chunk_blocks
from ragstream.domain.documents.parsing import parse
from ragstream.domain.documents.reading import embedding_text
from ragstream.domain.llm.embeddings import HashingEmbedder
from ragstream.workpool import SERVING_NICENESS

CREATE = """mutation($input: CreateDocumentInput!) { createDocument(input: $input) { id } }"""
WORDS = [
    f"{a}{b}"
    for a in ("pro", "con", "sub", "inter", "re", "de")
    for b in (
        "cess",
        "tract",
        "ject",
        "port",
        "form",
        "duct",
        "vent",
        "scribe",
        "mit",
        "pose",
        "sist",
        "fer",
        "gress",
        "struct",
        "spect",
        "tain",
    )
]


def markdown_document(rng: random.Random, sections: int) -> str:
    parts = [f"# Handbook {rng.randrange(10**6)}"]
    for s in range(sections):
        parts.append(f"## Section {s}")
        for _ in range(4):
            sentence_count = rng.randint(4, 8)
            sentences = [
                " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."
                for _ in range(sentence_count)
            ]
            parts.append(" ".join(sentences))
    return "\n\n".join(parts)


FLOOR_TABLE = "floor_chunks"


# Anything still running in the database besides the bench's own connection (the server's
# last job finishing, autovacuum, a checkpoint's aftermath).
BUSY = """
SELECT (SELECT count(*) FROM documents WHERE status IN ('PENDING', 'PROCESSING'))
     + (SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))
     + (SELECT count(*) FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND (state = 'active' OR backend_type = 'autovacuum worker'))
"""
SETTLE_TIMEOUT_S = 30.0
# The size of the chunks' vectors, as the migrations made the column.
DIMENSIONS = """
SELECT atttypmod FROM pg_attribute
WHERE attrelid = 'chunks'::regclass AND attname = 'embedding'
"""


@dataclass
class Round:
    ragstream_s: float
    floor_s: float
    chunks: int
    failed: int
    upload_s: float
    floor_copy_s: float
    waited_s: float
    load: tuple[float, float]

    @property
    def ratio(self) -> float:
        return self.floor_s / self.ragstream_s


async def settle(conn: asyncpg.Connection) -> float:
    """Waits until nothing else runs in the database; returns the seconds waited."""
    started = time.perf_counter()
    while await conn.fetchval(BUSY):
        if time.perf_counter() - started > SETTLE_TIMEOUT_S:
            raise RuntimeError(f"the database was still busy after {SETTLE_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def reset(conn: asyncpg.Connection) -> None:
    """Both tables empty (their indexes too) and no dirty buffer left to either contestant.
    CASCADE: chat citations refer to chunks (none exist in this bench)."""
    await conn.execute(f"TRUNCATE chunks, {FLOOR_TABLE} CASCADE")
    await conn.execute("CHECKPOINT")


@contextlib.contextmanager
def server_process(database_url: str, concurrency: int) -> Iterator[str]:
    """`ragstream serve` on ``database_url`` with the offline embedder until the block ends;
    yields its GraphQL URL."""
    with tempfile.TemporaryDirectory(prefix="ragstream-bench-") as data_dir:
        port = free_port()
        env = {
            **_server_env(data_dir, port),
            "RAGSTREAM_DATABASE_URL": database_url,
            "RAGSTREAM_EMBEDDING_PROVIDER": "hashing",
            "RAGSTREAM_INGESTION_CONCURRENCY": str(concurrency),
        }
        with serve_process(env) as url:
            yield url


async def ragstream_round(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    conn: asyncpg.Connection,
    bodies: list[str],
    tag: str,
) -> tuple[float, float, int]:
    """Upload every body through the API and wait until no document is left unfinished."""
    before = int(await conn.fetchval("SELECT count(*) FROM chunks"))
    started = time.perf_counter()
    for i, body in enumerate(bodies):
        await graphql(
            client,
            url,
            CREATE,
            {"input": {"title": f"Doc {tag}{i}", "content": body, "mimeType": "text/markdown"}},
            token,
        )
    accepted = time.perf_counter() - started
    unfinished = "SELECT count(*) FROM documents WHERE status IN ('PENDING', 'PROCESSING')"
    while True:
        if not await conn.fetchval(unfinished):
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    after = int(await conn.fetchval("SELECT count(*) FROM chunks"))
    return elapsed, accepted, after - before


async def floor_round(
    conn: asyncpg.Connection, embedder: HashingEmbedder, bodies: list[str]
) -> tuple[float, float, int]:
    """The floor: ragstream's own parse, chunk and embed in one thread, then one COPY per
    document (in its own transaction, with ragstream's binary payload) into a table with the
    same indexes as ``chunks``. Returns the round's time, the part of it in COPY, chunks."""
    started = time.perf_counter()
    copying = 0.0
    total = 0
    for i, body in enumerate(bodies):
        title, document_id = f"Floor {i}", uuid.uuid4()  # no foreign key on the floor's table
        drafts = chunk_blocks(parse("text/markdown", body.encode()), target=500, overlap=50)
        vectors = embedder.embed_sync(
            [embedding_text(title, d.heading_path, d.content) for d in drafts]
        )
        payload = chunk_copy_payload(document_id, drafts, vectors)
        copy_started = time.perf_counter()
        async with conn.transaction():
            await conn.copy_to_table(
                FLOOR_TABLE, source=memoryview(payload), columns=CHUNK_COPY_COLUMNS, format="binary"
            )
        copying += time.perf_counter() - copy_started
        total += len(drafts)
    return time.perf_counter() - started, copying, total


def embedder_ms_per_chunk(bodies: list[str]) -> float:
    """CPU time of the hashing embedder alone per chunk, batches of 64, warm vocabulary."""
    texts = [
        embedding_text("Doc", d.heading_path, d.content)
        for body in bodies
        for d in chunk_blocks(parse("text/markdown", body.encode()), target=500, overlap=50)
    ]
    embedder = HashingEmbedder(384)
    embedder.embed_sync(texts)
    started = time.process_time()
    for start in range(0, len(texts), 64):
        embedder.embed_sync(texts[start : start + 64])
    return (time.process_time() - started) / len(texts) * 1000


async def measured_round(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    conn: asyncpg.Connection,
    embedder: HashingEmbedder,
    bodies: list[str],
    number: int,
) -> Round:
    """One round: both tables emptied, then both contestants on the same documents, each
    starting on an idle database; the order alternates with ``number``."""
    await reset(conn)
    load_before = os.getloadavg()[0]
    waited = 0.0
    for contestant in ("ragstream", "floor") if number % 2 == 0 else ("floor", "ragstream"):
        waited += await settle(conn)
        if contestant == "ragstream":
            ours, upload, chunks = await ragstream_round(
                client, url, token, conn, bodies, f"r{number}-"
            )
        else:
            floor, floor_copy, floor_chunks = await floor_round(conn, embedder, bodies)
    failed = int(await conn.fetchval("SELECT count(*) FROM documents WHERE status = 'FAILED'"))
    assert floor_chunks == chunks, (floor_chunks, chunks)
    return Round(
        ours, floor, chunks, failed, upload, floor_copy, waited, (load_before, os.getloadavg()[0])
    )


async def run(documents: int, sections: int, concurrency: int, rounds: int) -> None:
    rng = random.Random(7)
    # New documents every round (ragstream refuses an upload it already has); the first
    # batch is the warm-up.
    per_round = [
        [markdown_document(rng, sections) for _ in range(documents)] for _ in range(rounds + 1)
    ]
    results: list[Round] = []
    async with embedded_database() as (database, name, _):
        conn = await asyncpg.connect(database.libpq_uri(name))
        # LIKE ... INCLUDING ALL: the same columns, computed tsv and indexes (HNSW, GIN,
        # unique ordinal), without the foreign key.
        await conn.execute(f"CREATE TABLE {FLOOR_TABLE} (LIKE chunks INCLUDING ALL)")
        floor_embedder = HashingEmbedder(await conn.fetchval(DIMENSIONS))
        with server_process(database.url(name), concurrency) as url:
            await wait_ready(url)
            async with httpx.AsyncClient(timeout=60) as client:
                _, token = await register(client, url)
                for number, bodies in enumerate(per_round):
                    results.append(
                        await measured_round(
                            client, url, token, conn, floor_embedder, bodies, number
                        )
                    )
        await conn.close()
    measured = results[1:]  # the first round warms up
    embed_ms = embedder_ms_per_chunk(per_round[0][:30])
    megabytes = sum(len(b.encode()) for b in per_round[0]) / 1e6
    ours_rate = statistics.median(r.chunks / r.ragstream_s for r in measured)
    floor_rate = statistics.median(r.chunks / r.floor_s for r in measured)
    median_chunks = statistics.median(r.chunks for r in measured)
    loads = [load for r in measured for load in r.load]
    table = Table(
        title="ragstream ingestion against its floor (hashing embedder, loopback, embedded "
        "PostgreSQL, `ragstream serve` in its own process with its in-process worker: "
        f"{concurrency} jobs at a time, a work "
        f"pool of one process per CPU at nice {SERVING_NICENESS}; {os.cpu_count()} CPUs, "
        f"median of {rounds} interleaved rounds after a warm-up, each of {documents} documents "
        f"(~{megabytes:.1f} MB, ~{median_chunks:.0f} chunks) into emptied tables on an idle "
        f"database; load average {min(loads):.1f}-{max(loads):.1f})"
    )
    for column in ("contestant", "median chunks/s", "ratio to floor", "median of round ratios"):
        table.add_column(column, justify="right")
    table.add_row(
        "floor (one thread: parse, chunk, embed, COPY)", f"{floor_rate:.0f}", "1.00", "1.00"
    )
    table.add_row(
        "ragstream (createDocument -> job -> READY)",
        f"{ours_rate:.0f}",
        f"{ours_rate / floor_rate:.2f}",
        f"{statistics.median(r.ratio for r in measured):.2f}",
    )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for i, result in enumerate(results):
        console.print(
            f"{'warm-up' if i == 0 else f'round {i}'}: {result.chunks} chunks, "
            f"ragstream {result.ragstream_s:.2f} s (uploads {result.upload_s:.2f} s), "
            f"floor {result.floor_s:.2f} s (COPY {result.floor_copy_s:.2f} s), "
            f"ratio {result.ratio:.2f}, failed documents {result.failed}, "
            f"waited for idle {result.waited_s:.2f} s, "
            f"load avg {result.load[0]:.1f}-{result.load[1]:.1f}"
        )
    console.print(f"hashing embedder alone: {embed_ms:.3f} ms CPU per chunk (batches of 64)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(run(args.documents, args.sections, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
