"""SQL statements and latency of nested connections inside lists.

Starts the app on a throw-away embedded database, seeds one account with conversations of many
messages (answers citing three sources) and documents of many chunks (with embeddings), then asks
for `conversations(first: N) { ... messages(first: 5) }` and `documents(first: N) { ...
chunks(first: 5) }` for several N and prints the statements each request sent and its latency.

    python bench/nested.py
    python bench/nested.py --messages 400 --chunks 500 --runs 50
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
from sqlalchemy import event, text

from bench.common import bench_settings, embedded_database, graphql, live_app, percentile, register

PARENTS = (3, 20, 100)
CONVERSATIONS = """query($first: Int) {
  conversations(first: $first) { edges { node { id messages(first: 5) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { cursor node { id role content status sources { index title excerpt } } }
  } } } }
}"""
DOCUMENTS = """query($first: Int) {
  documents(first: $first) { edges { node { id title chunks(first: 5) {
    totalCount pageInfo { hasNextPage endCursor }
    edges { cursor node { id ordinal content headingPath } }
  } } } }
}"""


async def seed(state: Any, owner: str, parents: int, messages: int, chunks: int) -> None:
    """Rows written directly: the bench measures reads, not the chat or ingestion pipeline."""
    async with state.sessionmaker.begin() as session:
        await session.execute(text("SET LOCAL statement_timeout = 0"))
        # Nothing here searches; keeping the vector index up to date would dominate the seeding.
        await session.execute(text("DROP INDEX IF EXISTS ix_chunks_embedding_hnsw"))
        await session.execute(
            text(
                "INSERT INTO conversations (owner_id, title, created_at) "
                "SELECT CAST(:owner AS uuid), 'Conversation ' || p, now() - p * interval '1 s' "
                "FROM generate_series(1, :parents) AS p"
            ),
            {"owner": owner, "parents": parents},
        )
        await session.execute(
            text(
                "INSERT INTO messages (conversation_id, owner_id, role, content, status, "
                "created_at) "
                "SELECT c.id, c.owner_id, CASE WHEN n % 2 = 0 THEN 'USER' ELSE 'ASSISTANT' END, "
                "repeat('Message text ', 40), 'COMPLETE', c.created_at + n * interval '1 ms' "
                "FROM conversations AS c, generate_series(0, :messages - 1) AS n"
            ),
            {"messages": messages},
        )
        await session.execute(
            text(
                "INSERT INTO message_sources (message_id, index, title, excerpt, score) "
                "SELECT m.id, i, 'Source ' || i, repeat('Excerpt ', 60), 0.5 "
                "FROM messages AS m, generate_series(1, 3) AS i WHERE m.role = 'ASSISTANT'"
            )
        )
        await session.execute(
            text(
                "INSERT INTO documents (owner_id, title, filename, mime_type, size_bytes, "
                "content_sha256, visibility, status, chunk_count, created_at) "
                "SELECT CAST(:owner AS uuid), 'Document ' || p, 'document-' || p || '.txt', "
                "'text/plain', 1000, md5(p::text), 'PRIVATE', 'READY', :chunks, "
                "now() - p * interval '1 s' FROM generate_series(1, :parents) AS p"
            ),
            {"owner": owner, "parents": parents, "chunks": chunks},
        )
        dimensions = int(state.settings.embedding_dimensions)
        await session.execute(
            text(
                "INSERT INTO chunks (document_id, ordinal, content, heading_path, heading, "
                "token_count, embedding) "
                "SELECT d.id, n, repeat('Chunk text ', 200), ARRAY['Section'], 'Section', 500, "
                "CAST((SELECT array_agg(random()) FROM generate_series(1, :dimensions) AS g "
                "WHERE n >= 0) AS vector) FROM documents AS d, generate_series(0, :chunks - 1) AS n"
            ),
            {"chunks": chunks, "dimensions": dimensions},
        )
        await session.execute(text("ANALYZE conversations, messages, documents, chunks"))


async def measure(
    client: httpx.AsyncClient, url: str, state: Any, token: str, query: str, first: int, runs: int
) -> tuple[int, float, float]:
    """Statements of one request, and p50 / p99 latency in ms over ``runs`` requests."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = state.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        await graphql(client, url, query, {"first": first}, token)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        await graphql(client, url, query, {"first": first}, token)
        timings.append((time.perf_counter() - started) * 1000)
    return len(statements), percentile(timings, 50), percentile(timings, 99)


async def run(args: argparse.Namespace) -> None:
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(
            database.url(name), data_dir, ingestion_worker=False, max_list_items=100_000
        )
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=60) as client:
            owner, token = await register(client, url)
            print(
                f"seeding {max(PARENTS)} conversations x {args.messages} messages and "
                f"{max(PARENTS)} documents x {args.chunks} chunks ...",
                flush=True,
            )
            await seed(state, owner, max(PARENTS), args.messages, args.chunks)
            rows = []
            for label, query in (
                ("conversations -> messages(first: 5)", CONVERSATIONS),
                ("documents -> chunks(first: 5)", DOCUMENTS),
            ):
                for first in PARENTS:
                    await measure(client, url, state, token, query, first, args.warmup)
                    count, p50, p99 = await measure(
                        client, url, state, token, query, first, args.runs
                    )
                    rows.append(
                        f"| {label:<36} | {first:>7} | {count:>10} | {p50:>7.1f} | {p99:>7.1f} |"
                    )
    header = (
        f"| {'query':<36} | {'parents':>7} | {'statements':>10} | {'p50 ms':>7} | {'p99 ms':>7} |"
    )
    print(f"\n{args.runs} sequential requests per row after {args.warmup} warm-up requests\n")
    print(header)
    print("|" + "|".join("-" * len(cell) for cell in header.split("|")[1:-1]) + "|")
    for row in rows:
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200, help="messages per conversation")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per document")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if not (1 <= args.messages <= 10_000 and 1 <= args.chunks <= 10_000):
        parser.error("messages and chunks must be 1..10000")
    if args.runs < 2 or args.warmup < 1:
        parser.error("runs must be at least 2 and warmup at least 1")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
