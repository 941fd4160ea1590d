"""Search latency through the API and HNSW recall, at growing knowledge-base sizes.

Usage: python -m bench.search [--sizes 10000 100000] [--queries 100]
Chunks are synthetic passages embedded with the offline hashing embedder and loaded with
COPY; half belong to the searching user, half to another user (so the visibility filter
works for its living). Loopback only, throwaway embedded PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import time
import uuid

import asyncpg
import httpx
import numpy as np
from pgvector.asyncpg import register_vector
from rich.console import Console
from rich.table import Table

from bench.common import bench_settings, embedded_database, graphql, live_app, percentile, register
from ragstream.db.models.users import User
from ragstream.db.repositories.search import SearchRepository
from ragstream.domain.llm.embeddings import HashingEmbedder

SEARCH = "query($q: String!) { search(query: $q, limit: 10) { score chunk { id } } }"
CHUNKS_PER_DOCUMENT = 100


def vocabulary(rng: random.Random, size: int = 4000) -> list[str]:
    syllables = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "si", "de", "pa", "go", "hu", "ze"]
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def passage(rng: random.Random, words: list[str], weights: list[float]) -> str:
    return " ".join(rng.choices(words, weights, k=rng.randint(30, 60))) + "."


async def seed(
    conn: asyncpg.Connection,
    embedder: HashingEmbedder,
    owners: list[uuid.UUID],
    count: int,
    rng: random.Random,
    words: list[str],
    weights: list[float],
) -> tuple[float, float]:
    """Add ``count`` chunks; returns (embed seconds, copy + index seconds)."""
    texts = [passage(rng, words, weights) for _ in range(count)]
    started = time.perf_counter()
    vectors = await asyncio.to_thread(embedder.embed_sync, texts)
    embedded = time.perf_counter() - started
    started = time.perf_counter()
    documents: list[tuple[object, ...]] = []
    chunks: list[tuple[object, ...]] = []
    for start in range(0, count, CHUNKS_PER_DOCUMENT):
        document_id = uuid.uuid4()
        owner = owners[(start // CHUNKS_PER_DOCUMENT) % len(owners)]
        batch = texts[start : start + CHUNKS_PER_DOCUMENT]
        documents.append(
            (
                document_id,
                owner,
                f"Synthetic {document_id.hex[:8]}",
                "synthetic.txt",
                "text/plain",
                sum(len(t) for t in batch),
                hashlib.sha256(document_id.bytes).hexdigest(),
                "PRIVATE",
                "READY",
                len(batch),
            )
        )
        for ordinal, content in enumerate(batch):
            chunks.append(
                (
                    uuid.uuid4(),
                    document_id,
                    ordinal,
                    content,
                    [],
                    "",
                    None,
                    len(content) // 4,
                    np.asarray(vectors[start + ordinal], dtype=np.float32),
                )
            )
    await conn.execute("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw")
    await conn.copy_records_to_table(
        "documents",
        records=documents,
        columns=[
            "id",
            "owner_id",
            "title",
            "filename",
            "mime_type",
            "size_bytes",
            "content_sha256",
            "visibility",
            "status",
            "chunk_count",
        ],
    )
    await conn.copy_records_to_table(
        "chunks",
        records=chunks,
        columns=[
            "id",
            "document_id",
            "ordinal",
            "content",
            "heading_path",
            "heading",
            "page",
            "token_count",
            "embedding",
        ],
    )
    await conn.execute(
        "CREATE INDEX ix_chunks_embedding_hnsw ON chunks USING hnsw (embedding vector_cosine_ops)"
    )
    await conn.execute("ANALYZE chunks; ANALYZE documents")
    return embedded, time.perf_counter() - started


async def run(sizes: list[int], queries: int) -> None:
    rng = random.Random(11)
    words = vocabulary(rng)
    weights = [1.0 / (rank + 1) for rank in range(len(words))]  # Zipf-like word frequencies
    embedder = HashingEmbedder(384)
    rows = []
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(database.url(name), data_dir, ingestion_worker=False)
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=60) as client:
            me, token = await register(client, url)
            other, _ = await register(client, url)
            conn = await asyncpg.connect(database.libpq_uri(name))
            await register_vector(conn)
            owners = [uuid.UUID(me), uuid.UUID(other)]
            total = 0
            try:
                for size in sizes:
                    embed_s, load_s = await seed(
                        conn, embedder, owners, size - total, rng, words, weights
                    )
                    total = size
                    questions = [
                        " ".join(rng.choices(words, weights, k=rng.randint(3, 6)))
                        for _ in range(queries)
                    ]
                    for q in questions[:5]:  # warm-up
                        await graphql(client, url, SEARCH, {"q": q}, token)
                    latencies = []
                    for q in questions:
                        started = time.perf_counter()
                        await graphql(client, url, SEARCH, {"q": q}, token)
                        latencies.append((time.perf_counter() - started) * 1000)
                    recalls = []
                    async with state.sessionmaker() as session:
                        viewer = await session.get(User, uuid.UUID(me))
                        assert viewer is not None
                        repo = SearchRepository(session)
                        for q in questions[:50]:
                            [vector] = await embedder.embed([q])
                            approx = await repo.nearest_by_vector(viewer, vector, 10)
                            exact = await repo.nearest_by_vector(viewer, vector, 10, exact=True)
                            recalls.append(len(set(approx) & set(exact)) / max(1, len(exact)))
                    rows.append(
                        (
                            size,
                            embed_s,
                            load_s,
                            percentile(latencies, 50),
                            percentile(latencies, 95),
                            sum(recalls) / len(recalls),
                        )
                    )
            finally:
                await conn.close()
    table = Table(title="ragstream search (API, limit 10, hybrid; viewer owns half the chunks)")
    for column in ("chunks", "embed s", "COPY+HNSW s", "p50 ms", "p95 ms", "recall@10"):
        table.add_column(column, justify="right")
    for size, embed_s, load_s, p50, p95, recall in rows:
        table.add_row(
            f"{size:,}",
            f"{embed_s:.0f}",
            f"{load_s:.0f}",
            f"{p50:.1f}",
            f"{p95:.1f}",
            f"{recall:.3f}",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(run(sorted(args.sizes), args.queries))


if __name__ == "__main__":
    main()
