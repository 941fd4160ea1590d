"""API latency while a large PDF ingests in the server's own (in-process) ingestion worker.

Usage: python -m bench.ingest_latency [--pages 5000] [--idle-seconds 5]
Loopback only; a throwaway embedded PostgreSQL and the offline hashing embedder.

Generates a PDF of ``--pages`` pages of text, then asks `{ me { id } }` one request after the
other: first for ``--idle-seconds`` with nothing to ingest (the same server's own latency, the
comparison), then from the PDF's upload until its document is READY or FAILED. Prints p50, p99
and the maximum of both, the document's outcome and the load average. The client runs on the
server's event loop (as in every in-process benchmark here): anything that blocks that loop
shows in both figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text
from tests.documents_support import make_pdf

from bench.common import bench_settings, embedded_database, graphql, live_app, percentile, register
from bench.ingest import WORDS
from ragstream.app import AppState

ME = "{ me { id } }"
UPLOAD = "mutation($file: Upload!) { uploadDocument(file: $file) { id } }"


def generated_pdf(pages: int, rng: random.Random) -> bytes:
    """A valid PDF of ``pages`` pages, each some lines of words (Helvetica, uncompressed)."""
    return make_pdf(
        [
            [" ".join(rng.choice(WORDS) for _ in range(12)) + "." for _ in range(8)]
            for _ in range(pages)
        ]
    )


async def me_latency(client: httpx.AsyncClient, url: str, token: str) -> float:
    started = time.perf_counter()
    await graphql(client, url, ME, token=token)
    return (time.perf_counter() - started) * 1000


async def status_of(state: AppState, document_id: str) -> tuple[str, int, str | None]:
    async with state.sessionmaker() as session:
        row = (
            await session.execute(
                text("SELECT status, chunk_count, error FROM documents WHERE id = :id"),
                {"id": document_id},
            )
        ).one()
    return str(row[0]), int(row[1]), row[2]


async def run(pages: int, idle_seconds: float) -> None:
    pdf = generated_pdf(pages, random.Random(5))
    async with embedded_database() as (database, name, data_dir):
        settings = bench_settings(database.url(name), data_dir)
        async with live_app(settings) as (url, state), httpx.AsyncClient(timeout=120) as client:
            _, token = await register(client, url)
            idle: list[float] = []
            load_idle = os.getloadavg()[0]
            until = time.perf_counter() + idle_seconds
            while time.perf_counter() < until:
                idle.append(await me_latency(client, url, token))

            load_busy = os.getloadavg()[0]
            started = time.perf_counter()
            response = await client.post(
                url,
                data={
                    "operations": json.dumps({"query": UPLOAD, "variables": {"file": None}}),
                    "map": json.dumps({"0": ["variables.file"]}),
                },
                files={"0": ("generated.pdf", pdf, "application/pdf")},
                headers={"Authorization": f"Bearer {token}", "Apollo-Require-Preflight": "1"},
            )
            body = response.json()
            if body.get("errors"):
                raise RuntimeError(body["errors"])
            document_id = body["data"]["uploadDocument"]["id"]
            busy: list[float] = []
            while True:
                busy.append(await me_latency(client, url, token))
                status, chunks, error = await status_of(state, document_id)
                if status in ("READY", "FAILED"):
                    break
            ingested = time.perf_counter() - started
    table = Table(
        title=f"`{{ me {{ id }} }}` one request at a time, in-process worker ingesting a "
        f"{pages:,}-page PDF ({len(pdf) / 1e6:.1f} MB), {os.cpu_count()} CPUs"
    )
    for column in ("while", "requests", "p50 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for label, values in (("nothing ingests", idle), ("the PDF ingests", busy)):
        table.add_row(
            label,
            str(len(values)),
            f"{statistics.median(values):.1f}",
            f"{percentile(values, 99):.1f}",
            f"{max(values):.1f}",
        )
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(
        f"document {status} with {chunks} chunks in {ingested:.1f} s"
        + (f" ({error})" if error else "")
        + f"; load avg {load_idle:.1f} (idle part), {load_busy:.1f}-{os.getloadavg()[0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, default=5000)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    args = parser.parse_args()
    asyncio.run(run(args.pages, args.idle_seconds))


if __name__ == "__main__":
    main()
