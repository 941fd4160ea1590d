"""Ingestion scaling: one `ragstream worker` process against two, draining the same kind of queue.

Usage: python -m bench.ingest_workers [--documents 40] [--sections 8] [--rounds 3]
                                      [--concurrency 1] [--work-processes 1]
Loopback only; one throwaway embedded PostgreSQL, the offline hashing embedder.

Every worker process gets the same settings, printed in the table's title: ``--concurrency``
jobs at a time (RAGSTREAM_INGESTION_CONCURRENCY) and a work pool of ``--work-processes``
processes (RAGSTREAM_WORK_PROCESSES). The defaults, one job at a time and one pool process,
make a worker about one core's worth of work (its job's steps take turns: parse and embed in
the pool, then the COPY in PostgreSQL), which is how workers are sized to scale with cores;
with 2 and 2 a single worker already keeps two cores busy.

Each round runs both configurations, the order alternating: start the worker processes, let
them ingest a warm-up batch (their work pools start and learn the vocabulary), then commit a
batch of new documents with their jobs in one transaction and time until every one of them is
READY or FAILED; then stop the processes. Prints each round, the medians, the load average and
the ratio of two workers to one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from bench.common import bench_settings, embedded_database, live_app, register
from bench.ingest import markdown_document
from bench.queries import _server_env, free_port
from ragstream.app import AppState
from ragstream.db.models.documents import Document
from ragstream.db.repositories.documents import DocumentRepository
from ragstream.domain.documents.enums import DocumentStatus, Visibility

UNFINISHED = "SELECT count(*) FROM documents WHERE status IN ('PENDING', 'PROCESSING')"


@contextlib.contextmanager
def worker_processes(
    database_url: str, count: int, concurrency: int, work_processes: int
) -> Iterator[None]:
    """``count`` `ragstream worker` processes on the database until the block ends."""
    with tempfile.TemporaryDirectory(prefix="ragstream-bench-") as data_dir:
        env = {
            **_server_env(data_dir, free_port()),
            "RAGSTREAM_DATABASE_URL": database_url,
            "RAGSTREAM_EMBEDDING_PROVIDER": "hashing",
            "RAGSTREAM_INGESTION_CONCURRENCY": str(concurrency),
            "RAGSTREAM_WORK_PROCESSES": str(work_processes),
        }
        processes = [
            subprocess.Popen([sys.executable, "-m", "ragstream.cli", "worker"], env=env)
            for _ in range(count)
        ]
        try:
            yield
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


async def enqueue(state: AppState, owner_id: uuid.UUID, bodies: list[str]) -> None:
    """The documents and their jobs, committed together: the workers see the whole batch at once."""
    async with state.sessionmaker.begin() as session:
        documents = DocumentRepository(session)
        for body in bodies:
            data = body.encode()
            document = Document(
                id=uuid.uuid4(),
                owner_id=owner_id,
                title=f"Doc {uuid.uuid4().hex[:8]}",
                filename="doc.md",
                mime_type="text/markdown",
                size_bytes=len(data),
                content_sha256=hashlib.sha256(data).hexdigest(),
                visibility=Visibility.PRIVATE,
                status=DocumentStatus.PENDING,
                error=None,
                chunk_count=0,
            )
            await documents.add(document, data)  # with its job


async def drain(state: AppState) -> None:
    """Until no document is left PENDING or PROCESSING (at most 10 minutes)."""
    async with asyncio.timeout(600):
        while True:
            async with state.sessionmaker() as session:
                if not await session.scalar(text(UNFINISHED)):
                    return
            await asyncio.sleep(0.05)


async def chunk_count(state: AppState) -> int:
    async with state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM chunks")) or 0)


async def timed_batch(
    state: AppState,
    database_url: str,
    owner_id: uuid.UUID,
    workers: int,
    concurrency: int,
    work_processes: int,
    warm_up: list[str],
    bodies: list[str],
) -> tuple[float, int]:
    """Seconds for ``workers`` warmed-up processes to finish ``bodies``, and the chunks made."""
    with worker_processes(database_url, workers, concurrency, work_processes):
        await enqueue(state, owner_id, warm_up)
        await drain(state)
        before = await chunk_count(state)
        started = time.perf_counter()
        await enqueue(state, owner_id, bodies)
        await drain(state)
        elapsed = time.perf_counter() - started
        return elapsed, await chunk_count(state) - before


async def run(
    documents: int, sections: int, rounds: int, concurrency: int, work_processes: int
) -> None:
    rng = random.Random(11)

    def batch(size: int) -> list[str]:
        return [markdown_document(rng, sections) for _ in range(size)]

    rates: dict[int, list[float]] = {1: [], 2: []}
    lines: list[str] = []
    async with embedded_database() as (database, name, data_dir):
        url = database.url(name)
        settings = bench_settings(url, data_dir, ingestion_worker=False)
        async with live_app(settings) as (api, state), httpx.AsyncClient(timeout=60) as client:
            owner, _ = await register(client, api)
            for r in range(rounds):
                for workers in (1, 2) if r % 2 == 0 else (2, 1):
                    load = os.getloadavg()[0]
                    seconds, chunks = await timed_batch(
                        state,
                        url,
                        uuid.UUID(owner),
                        workers,
                        concurrency,
                        work_processes,
                        batch(max(4, documents // 4)),
                        batch(documents),
                    )
                    rates[workers].append(chunks / seconds)
                    lines.append(
                        f"round {r}, {workers} worker(s): {chunks} chunks in {seconds:.2f} s "
                        f"({chunks / seconds:.0f} chunks/s), load avg {load:.1f}-"
                        f"{os.getloadavg()[0]:.1f}"
                    )
        async with state.sessionmaker() as session:
            failed = int(
                await session.scalar(text("SELECT count(*) FROM documents WHERE status = 'FAILED'"))
                or 0
            )
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    table = Table(
        title=f"`ragstream worker` processes draining {documents} queued Markdown documents "
        f"(hashing embedder; each worker: {concurrency} job(s) at a time, a work pool of "
        f"{work_processes} process(es); {os.cpu_count()} CPUs; median of {rounds} interleaved "
        "rounds)"
    )
    for column in ("contestant", "median chunks/s", "ratio to one worker"):
        table.add_column(column, justify="right")
    table.add_row("1 worker process", f"{one:.0f}", "1.00")
    table.add_row("2 worker processes", f"{two:.0f}", f"{two / one:.2f}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for line in lines:
        console.print(line)
    console.print(f"failed documents: {failed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=40)
    parser.add_argument("--sections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--work-processes", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(
        run(args.documents, args.sections, args.rounds, args.concurrency, args.work_processes)
    )


if __name__ == "__main__":
    main()
