"""Ingestion throughput end to end: createDocument over HTTP -> job -> parse/chunk/embed/store.

Usage: python -m bench.ingest [--documents 200] [--sections 8]
Loopback only; uses a throwaway embedded PostgreSQL and the offline hashing embedder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench.common import bench_settings, embedded_database, graphql, live_app, register

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


async def run(documents: int, sections: int, concurrency: int) -> None:
    rng = random.Random(7)
    bodies = [markdown_document(rng, sections) for _ in range(documents)]
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(database.url(name), data_dir, ingestion_concurrency=concurrency)
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=60) as client:
            _, token = await register(client, url)
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            for i, body in enumerate(bodies):
                await graphql(
                    client,
                    url,
                    CREATE,
                    {"input": {"title": f"Doc {i}", "content": body, "mimeType": "text/markdown"}},
                    token,
                )
            accepted = time.perf_counter() - started
            while True:
                async with state.sessionmaker() as session:
                    left = await session.scalar(
                        text(
                            "SELECT count(*) FROM documents "
                            "WHERE status IN ('PENDING', 'PROCESSING')"
                        )
                    )
                if not left:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            load_after = os.getloadavg()[0]
            async with state.sessionmaker() as session:
                chunks = int(await session.scalar(text("SELECT count(*) FROM chunks")) or 0)
                failed = int(
                    await session.scalar(
                        text("SELECT count(*) FROM documents WHERE status = 'FAILED'")
                    )
                    or 0
                )
    megabytes = sum(len(b.encode()) for b in bodies) / 1e6
    table = Table(
        title="ragstream ingestion (hashing embedder, loopback, embedded PostgreSQL, "
        f"{concurrency} workers, {os.cpu_count()} CPUs)"
    )
    for column in (
        "documents",
        "MB",
        "chunks",
        "failed",
        "upload s",
        "total s",
        "chunks/s",
        "docs/s",
        "load avg",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(documents),
        f"{megabytes:.1f}",
        str(chunks),
        str(failed),
        f"{accepted:.1f}",
        f"{elapsed:.1f}",
        f"{chunks / elapsed:.0f}",
        f"{documents / elapsed:.1f}",
        f"{load_before:.1f}-{load_after:.1f}",
    )
    Console(width=max(Console().width, 120)).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    asyncio.run(run(args.documents, args.sections, args.concurrency))


if __name__ == "__main__":
    main()
