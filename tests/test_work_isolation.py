"""CPU-heavy ingestion work runs in worker processes, within per-document limits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from ragstream.domain.documents.parsing import ParseError
from ragstream.domain.documents.reading import ReadingLimits, read_document
from ragstream.domain.llm.embeddings import HashingEmbedder
from ragstream.workpool import SERVING_NICENESS, JobTimeout, WorkPool, WorkPoolBroken
from tests.conftest import make_settings
from tests.documents_support import upload, wait_for_status
from tests.support import LiveServer, running_server
from tests.work_jobs import die, niceness, sleep_deaf_to_alarms, sleep_for


@pytest.fixture
async def pool() -> AsyncIterator[WorkPool]:
    work = WorkPool(1, kill_grace_seconds=10)
    try:
        # Started before the tests time anything: a new process may take seconds to start.
        await work.run(sleep_for, 0)
        yield work
    finally:
        work.shutdown()


async def test_jobs_run_in_another_process(pool: WorkPool) -> None:
    assert await pool.run(sleep_for, 0) != os.getpid()


async def test_processes_beside_a_server_are_nicer_and_a_worker_command_s_are_not(
    pool: WorkPool,
) -> None:
    own = os.nice(0)
    assert await pool.run(niceness) == min(19, own + SERVING_NICENESS)
    plain = WorkPool(1, niceness=0)
    try:
        assert await plain.run(niceness) == own
    finally:
        plain.shutdown()


async def test_a_job_past_its_time_limit_is_stopped_and_the_pool_goes_on(pool: WorkPool) -> None:
    before = await pool.run(sleep_for, 0)
    with pytest.raises(JobTimeout):
        await pool.run(sleep_for, 30, time_limit=0.2)
    # The same process: it stopped the job itself and took the next one.
    assert await pool.run(sleep_for, 0, time_limit=30) == before


async def test_a_job_that_ignores_its_time_limit_loses_its_process(pool: WorkPool) -> None:
    pool.kill_grace_seconds = 0.5
    first = await pool.run(sleep_for, 0)
    with pytest.raises(JobTimeout):
        await pool.run(sleep_deaf_to_alarms, 30, time_limit=0.1)
    assert await pool.run(sleep_for, 0) not in (first, os.getpid())  # a fresh process


async def test_a_dead_worker_is_reported_and_replaced(pool: WorkPool) -> None:
    with pytest.raises(WorkPoolBroken):
        await pool.run(die)
    assert await pool.run(sleep_for, 0) != os.getpid()


async def test_hashing_batches_embed_in_the_pool_exactly_as_in_process(pool: WorkPool) -> None:
    texts = [f"passage {i} about invoices and payments" for i in range(10)]
    pooled = HashingEmbedder(64, pool=pool)
    assert await pooled.embed(texts) == HashingEmbedder(64).embed_sync(texts)


def test_text_past_the_limit_is_refused_before_chunking() -> None:
    limits = ReadingLimits(max_text_chars=1_000)
    with pytest.raises(ParseError, match="longer than 1,000 characters"):
        read_document("text/plain", b"word " * 201, limits)
    with pytest.raises(ParseError, match="longer than 1,000 characters"):
        read_document("text/html", b"<p>" + b"word " * 201 + b"</p>", limits)
    assert read_document("text/plain", b"word " * 199, limits)


def test_too_many_chunks_are_refused() -> None:
    limits = ReadingLimits(target_tokens=16, overlap_tokens=0, max_chunks=3)
    paragraphs = "\n\n".join(f"Paragraph {i} says something long enough." for i in range(4))
    with pytest.raises(ParseError, match="more than 3 chunks"):
        read_document("text/markdown", paragraphs.encode(), limits)


def test_one_enormous_word_is_cut_into_bounded_pieces() -> None:
    limits = ReadingLimits(target_tokens=100, overlap_tokens=10, max_token_chars=50)
    drafts = read_document("text/plain", b"x" * 200_000, limits)
    assert sum(len(d.content.replace(" ", "")) for d in drafts) >= 200_000
    assert max(len(word) for d in drafts for word in d.content.split()) == 50
    # Within the target but for the separators between joined pieces, which are not estimated.
    assert max(d.token_count for d in drafts) <= 100 + 2


async def failed_upload(
    server: LiveServer, filename: str, data: bytes
) -> tuple[dict[str, object], int]:
    account = await server.register()
    status, result = await upload(server, account.access_token, filename, data)
    assert status == 200
    created = result.ok()["uploadDocument"]
    document = await wait_for_status(server, account.access_token, created["id"])
    async with server.state.sessionmaker() as session:
        chunks = await session.scalar(text("SELECT count(*) FROM chunks"))
    return document, int(chunks or 0)


async def test_a_single_line_over_the_text_limit_fails_and_stores_no_chunks(
    server: LiveServer,
) -> None:
    # Six million characters on one line: over the default limit of five million.
    document, chunks = await failed_upload(server, "line.txt", b"the same phrase " * 375_000)
    assert document["status"] == "FAILED"
    assert document["error"] == (
        "the document's text is longer than 5,000,000 characters, the limit for one document"
    )
    assert document["chunkCount"] == 0
    assert chunks == 0
    async with server.http_client() as client:
        assert (await client.get("/healthz")).status_code == 200


async def test_limits_come_from_the_settings(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(
        database_url,
        tmp_path,
        ingestion_max_chunks=2,
        chunk_target_tokens=16,
        chunk_overlap_tokens=0,
    )
    async with running_server(settings) as server:
        paragraphs = "\n\n".join(f"Paragraph {i} says something long enough." for i in range(5))
        document, chunks = await failed_upload(server, "many.md", paragraphs.encode())
    assert document["status"] == "FAILED"
    assert document["error"] == "the document makes more than 2 chunks, the limit for one document"
    assert chunks == 0


async def test_a_document_past_the_time_limit_fails(database_url: str, tmp_path: Path) -> None:
    # A microsecond: reading a megabyte of text takes thousands of times longer.
    settings = make_settings(database_url, tmp_path, ingestion_timeout_seconds=1e-6)
    async with running_server(settings) as server:
        document, chunks = await failed_upload(server, "big.txt", b"a few words. " * 80_000)
    assert document["status"] == "FAILED"
    assert document["error"] == (
        "reading the document took longer than 1e-06 s, the limit for one document"
    )
    assert chunks == 0


def test_workers_end_with_a_parent_that_never_shut_its_pool_down() -> None:
    # A parent process that starts a worker, then exits without any shutdown.
    script = (
        "import asyncio, os, sys\n"
        "from ragstream.workpool import WorkPool\n"
        "from tests.work_jobs import sleep_for\n"
        "async def main():\n"
        "    pool = WorkPool(1)\n"
        "    print(await pool.run(sleep_for, 0), flush=True)\n"
        "    os._exit(0)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.run(  # noqa: S603  (our own interpreter, a fixed script)
        [sys.executable, "-c", script],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    worker = int(parent.stdout.strip())
    for _ in range(3_000):
        if not Path(f"/proc/{worker}").exists():
            return
        time.sleep(0.01)
    raise AssertionError(f"worker {worker} outlived its parent")
