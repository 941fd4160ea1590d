"""Ingestion throughput end to end: createDocument over HTTP -> job -> parse/chunk/embed/store.

Usage: python -m bench.ingest [--documents 50] [--sections 8] [--concurrency 2] [--rounds 3]
Loopback only; uses a throwaway embedded PostgreSQL and the offline hashing embedder.

The floor, measured in the same run: ragstream's own parse, chunk and embed code in one
thread, then one binary COPY per document (the payload ragstream's jobs send) into a table
with the same indexes as ``chunks``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
import uuid
from dataclasses import dataclass

import asyncpg
import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench.common import bench_settings, embedded_database, graphql, live_app, register
from ragstream.app import AppState
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


@dataclass
class Round:
    ragstream_s: float
    floor_s: float
    chunks: int
    failed: int
    upload_s: float
    load: tuple[float, float]


async def ragstream_round(
    client: httpx.AsyncClient, url: str, token: str, state: AppState, bodies: list[str], tag: str
) -> tuple[float, float, int]:
    """Upload every body through the API and wait until no document is left unfinished."""
    async with state.sessionmaker() as session:
        before = int(await session.scalar(text("SELECT count(*) FROM chunks")) or 0)
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
    while True:
        async with state.sessionmaker() as session:
            left = await session.scalar(
                text("SELECT count(*) FROM documents WHERE status IN ('PENDING', 'PROCESSING')")
            )
        if not left:
            break
        await asyncio.sleep(0.05)
    elapsed = time.perf_counter() - started
    async with state.sessionmaker() as session:
        after = int(await session.scalar(text("SELECT count(*) FROM chunks")) or 0)
    return elapsed, accepted, after - before


async def floor_round(
    conn: asyncpg.Connection, embedder: HashingEmbedder, bodies: list[str]
) -> tuple[float, int]:
    """The floor: ragstream's own parse, chunk and embed in one thread, then one COPY per
    document (in its own transaction, with ragstream's binary payload) into a table with the
    same indexes as ``chunks``."""
    started = time.perf_counter()
    total = 0
    for i, body in enumerate(bodies):
        title, document_id = f"Floor {i}", uuid.uuid4()  # no foreign key on the floor's table
        drafts = chunk_blocks(parse("text/markdown", body.encode()), target=500, overlap=50)
        vectors = embedder.embed_sync(
            [embedding_text(title, d.heading_path, d.content) for d in drafts]
        )
        payload = chunk_copy_payload(document_id, drafts, vectors)
        async with conn.transaction():
            await conn.copy_to_table(
                FLOOR_TABLE, source=memoryview(payload), columns=CHUNK_COPY_COLUMNS, format="binary"
            )
        total += len(drafts)
    return time.perf_counter() - started, total


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


async def run(documents: int, sections: int, concurrency: int, rounds: int) -> None:
    rng = random.Random(7)
    # New documents every round (ragstream refuses an upload it already has).
    per_round = [
        [markdown_document(rng, sections) for _ in range(documents)] for _ in range(rounds)
    ]
    results: list[Round] = []
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(database.url(name), data_dir, ingestion_concurrency=concurrency)
        conn = await asyncpg.connect(database.libpq_uri(name))
        # LIKE ... INCLUDING ALL: the same columns, computed tsv and indexes (HNSW, GIN,
        # unique ordinal), without the foreign key.
        await conn.execute(f"CREATE TABLE {FLOOR_TABLE} (LIKE chunks INCLUDING ALL)")
        floor_embedder = HashingEmbedder(settings.embedding_dimensions)
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=60) as client:
            _, token = await register(client, url)
            for r, bodies in enumerate(per_round):
                load_before = os.getloadavg()[0]
                # Interleaved, the order alternating: both meet the same machine load.
                if r % 2 == 0:
                    ours, upload, chunks = await ragstream_round(
                        client, url, token, state, bodies, f"r{r}-"
                    )
                    floor, floor_chunks = await floor_round(conn, floor_embedder, bodies)
                else:
                    floor, floor_chunks = await floor_round(conn, floor_embedder, bodies)
                    ours, upload, chunks = await ragstream_round(
                        client, url, token, state, bodies, f"r{r}-"
                    )
                async with state.sessionmaker() as session:
                    failed = int(
                        await session.scalar(
                            text("SELECT count(*) FROM documents WHERE status = 'FAILED'")
                        )
                        or 0
                    )
                assert floor_chunks == chunks, (floor_chunks, chunks)
                results.append(
                    Round(ours, floor, chunks, failed, upload, (load_before, os.getloadavg()[0]))
                )
        await conn.close()
    embed_ms = embedder_ms_per_chunk(per_round[0][:30])
    megabytes = sum(len(b.encode()) for b in per_round[0]) / 1e6
    ours_rate = statistics.median(r.chunks / r.ragstream_s for r in results)
    floor_rate = statistics.median(r.chunks / r.floor_s for r in results)
    median_chunks = statistics.median(r.chunks for r in results)
    table = Table(
        title="ragstream ingestion against its floor (hashing embedder, loopback, embedded "
        f"PostgreSQL, the server's in-process worker: {concurrency} jobs at a time, a work "
        f"pool of one process per CPU at nice {SERVING_NICENESS}; {os.cpu_count()} CPUs, "
        f"median of {rounds} "
        f"interleaved rounds of {documents} documents, ~{megabytes:.1f} MB, "
        f"~{median_chunks:.0f} chunks)"
    )
    for column in ("contestant", "median chunks/s", "ratio to floor"):
        table.add_column(column, justify="right")
    table.add_row("floor (one thread: parse, chunk, embed, COPY)", f"{floor_rate:.0f}", "1.00")
    table.add_row(
        "ragstream (createDocument -> job -> READY)",
        f"{ours_rate:.0f}",
        f"{ours_rate / floor_rate:.2f}",
    )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for i, measured in enumerate(results):
        console.print(
            f"round {i}: {measured.chunks} chunks, ragstream {measured.ragstream_s:.2f} s "
            f"(uploads {measured.upload_s:.2f} s), floor {measured.floor_s:.2f} s, "
            f"failed documents {measured.failed}, "
            f"load avg {measured.load[0]:.1f}-{measured.load[1]:.1f}"
        )
    console.print(f"hashing embedder alone: {embed_ms:.3f} ms CPU per chunk (batches of 64)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.documents, args.sections, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
