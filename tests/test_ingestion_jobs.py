"""Durable ingestion: retries with backoff, giving up readably, restarts and crashed workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import psycopg
import pytest
from pgvector.sqlalchemy import Vector
from pydantic import SecretStr
from sqlalchemy import cast, func, literal, select, text

from ragstream.db.chunk_copy import chunk_copy_payload
from ragstream.db.engine import make_engine, make_sessionmaker
from ragstream.db.notify import asyncpg_dsn
from ragstream.db.repositories.documents import DocumentRepository
from ragstream.domain.documents import jobs
from ragstream.domain.documents.chunking import ChunkDraft
from ragstream.settings import Settings
from tests.chat_support import eventually
from tests.conftest import TEST_JWT_SECRET
from tests.documents_support import create, ingest_text, wait_for_status
from tests.openai_stub import EMBEDDINGS, OpenAIStub
from tests.support import LiveServer, running_server


def _online(settings: Settings, stub: OpenAIStub, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "embedding_provider": "openai",
        "openai_base_url": stub.base_url,
        "openai_api_key": SecretStr("test-key"),
        "openai_max_retries": 0,
        "ingestion_retry_base_seconds": 1,
        "ingestion_shutdown_timeout_seconds": 0.2,
        # Retried jobs are found by polling: look often, so retries are not waited for.
        "ingestion_poll_seconds": 0.1,
    }
    values.update(overrides)
    return settings.model_copy(update=values)


async def _until_waiting(stub: OpenAIStub, path: str = EMBEDDINGS) -> None:
    async with asyncio.timeout(60):
        while True:
            if stub.waiting(path):
                return
            await asyncio.sleep(0.02)


async def _scalar(server: LiveServer, sql: str) -> object:
    async with server.state.sessionmaker() as session:
        return await session.scalar(text(sql))


def test_the_job_queue_talks_to_postgresql_through_psycopgs_compiled_backend() -> None:
    # procrastinate runs on psycopg, whose pure-Python (ctypes) wrapper of libpq costs far more
    # CPU per statement; the `psycopg[binary]` dependency brings the compiled one.
    assert psycopg.pq.__impl__ in {"binary", "c"}


async def test_transient_provider_errors_are_retried_with_backoff(settings: Settings) -> None:
    async with OpenAIStub() as stub:
        stub.fail(EMBEDDINGS, times=2, status=503)
        async with running_server(_online(settings, stub)) as server:
            account = await server.register()
            created = (await create(server, account.access_token, "Retry me twice.")).ok()
            document = await wait_for_status(
                server, account.access_token, created["createDocument"]["id"]
            )

    assert document["status"] == "READY"
    assert document["error"] is None
    assert len(stub.requests_to(EMBEDDINGS)) == 3


async def test_persistent_provider_errors_fail_with_a_readable_error(settings: Settings) -> None:
    async with OpenAIStub() as stub:
        stub.fail(EMBEDDINGS, times=-1, status=429, message="secret provider detail")
        online = _online(settings, stub, ingestion_max_attempts=2)
        async with running_server(online) as server:
            account = await server.register()
            created = (await create(server, account.access_token, "Never embeddable.")).ok()
            document = await wait_for_status(
                server, account.access_token, created["createDocument"]["id"]
            )
            unfinished = await _scalar(
                server, "SELECT count(*) FROM documents WHERE status IN ('PENDING', 'PROCESSING')"
            )

    assert document["status"] == "FAILED"
    # 429 as a rule; under heavy load the client may instead report a dropped connection.
    assert document["error"].startswith("the embedding provider ")
    assert document["error"].endswith("; gave up after 2 attempts")
    assert "secret" not in document["error"]
    assert len(stub.requests_to(EMBEDDINGS)) == 2
    assert unfinished == 0


async def test_job_interrupted_by_a_restart_finishes_afterwards(settings: Settings) -> None:
    async with OpenAIStub() as stub:
        stub.hold(EMBEDDINGS)
        online = _online(settings, stub)
        async with running_server(online) as server:
            account = await server.register()
            created = (await create(server, account.access_token, "Survive the restart.")).ok()
            document_id = created["createDocument"]["id"]
            await _until_waiting(stub)
            interrupted = await _scalar(
                server,
                f"SELECT status FROM documents WHERE id = '{document_id}'",  # noqa: S608
            )
        # The server is gone; the provider answers again for whoever comes next.
        stub.release(EMBEDDINGS)
        async with running_server(online) as server:
            document = await wait_for_status(server, account.access_token, document_id)

    assert interrupted == "PROCESSING"
    assert document["status"] == "READY"
    assert document["chunkCount"] == 1


def _worker_env(settings: Settings, tmp_path: Path, stub: OpenAIStub) -> dict[str, str]:
    """The environment of a `ragstream worker` on the test database, embedding through
    ``stub``."""
    return {
        **os.environ,
        "RAGSTREAM_DATABASE_URL": str(settings.database_url),
        "RAGSTREAM_DATA_DIR": str(tmp_path / "worker"),
        "RAGSTREAM_JWT_SECRET": TEST_JWT_SECRET,
        "RAGSTREAM_EMBEDDING_PROVIDER": "openai",
        "RAGSTREAM_OPENAI_MAX_RETRIES": "0",
        "OPENAI_API_KEY": "test-key",
        "OPENAI_BASE_URL": stub.base_url,
    }


async def _logs_until(stream: asyncio.StreamReader, text: bytes) -> None:
    """Reads the process's log until a line holds ``text``; fails if it ends first."""
    async with asyncio.timeout(60):
        while text not in (line := await stream.readline()):
            assert line, f"the process ended before logging {text!r}"


@pytest.mark.parametrize("signals", [1, 2])
async def test_a_worker_process_stops_on_sigterm_after_its_job_and_at_once_on_a_second(
    settings: Settings, tmp_path: Path, signals: int
) -> None:
    async with OpenAIStub() as stub:
        stub.hold(EMBEDDINGS)
        quiet = _online(settings, stub, ingestion_worker=False)
        async with running_server(quiet) as server:
            account = await server.register()
            created = (await create(server, account.access_token, "Finished first.")).ok()
            document_id = created["createDocument"]["id"]
            env = {
                **_worker_env(settings, tmp_path, stub),
                # Longer than the test waits: only a stop at once ends it in time.
                "RAGSTREAM_INGESTION_SHUTDOWN_TIMEOUT_SECONDS": "120",
                # which the stalled time must leave room for
                "RAGSTREAM_INGESTION_STALLED_SECONDS": "600",
            }
            worker = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "ragstream.cli", "worker"),
                env=env,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            assert worker.stderr is not None
            try:
                await _until_waiting(stub)
                # when it is told to stop (once or twice) while its job waits for embeddings
                worker.send_signal(signal.SIGTERM)
                await _logs_until(worker.stderr, b"once its jobs are done")
                if signals == 2:
                    worker.send_signal(signal.SIGTERM)
                else:
                    stub.release(EMBEDDINGS)
                async with asyncio.timeout(60):
                    # (the log is read to its end, so the process never waits on its pipe)
                    await worker.stderr.read()
                    code = await worker.wait()
            finally:
                if worker.returncode is None:
                    worker.kill()
                    await worker.wait()
            status = await _scalar(
                server,
                f"SELECT status FROM documents WHERE id = '{document_id}'",  # noqa: S608
            )

    if signals == 1:
        # then its job finished within the grace, and the process ended cleanly
        assert (code, status) == (0, "READY")
    else:
        # then the second ended it at once, its job left to be retried once found stalled
        assert (code, status) == (-signal.SIGTERM, "PROCESSING")


async def test_a_crashed_worker_process_is_recovered(settings: Settings, tmp_path: Path) -> None:
    async with OpenAIStub() as stub:
        stub.hold(EMBEDDINGS)
        quiet = _online(settings, stub, ingestion_worker=False)
        async with running_server(quiet) as server:
            account = await server.register()
            created = (await create(server, account.access_token, "The worker dies.")).ok()
            document_id = created["createDocument"]["id"]
        worker = subprocess.Popen(  # noqa: ASYNC220  (a real process, killed below)
            [sys.executable, "-m", "ragstream.cli", "worker"],
            env=_worker_env(settings, tmp_path, stub),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await _until_waiting(stub)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
        stub.release(EMBEDDINGS)
        recovering = _online(
            settings,
            stub,
            ingestion_stalled_seconds=5.0,
            ingestion_recovery_interval_seconds=0.5,
        )
        async with running_server(recovering) as server:
            stuck = await _scalar(
                server,
                f"SELECT status FROM documents WHERE id = '{document_id}'",  # noqa: S608
            )
            document = await wait_for_status(server, account.access_token, document_id)

    assert stuck == "PROCESSING"
    assert document["status"] == "READY"


async def test_orphaned_documents_are_queued_again_at_start_up(settings: Settings) -> None:
    quiet = settings.model_copy(update={"ingestion_worker": False})
    async with running_server(quiet) as server:
        account = await server.register()
        created = (await create(server, account.access_token, "My job went missing.")).ok()
        document_id = created["createDocument"]["id"]
        async with server.state.sessionmaker.begin() as session:
            await session.execute(text("DELETE FROM procrastinate_jobs"))
    async with running_server(settings) as server:
        document = await wait_for_status(server, account.access_token, document_id)
    assert document["status"] == "READY"


async def test_a_failed_chunk_copy_writes_nothing_and_leaves_the_connection_usable(
    settings: Settings, database_url: str
) -> None:
    """Storing marks the document READY, then COPYs its chunks, in one transaction: when the
    COPY fails, neither the chunks nor the status change are written, and the pooled
    connection still answers the next statement."""
    async with running_server(settings) as server:
        account = await server.register()
        created = (await create(server, account.access_token, "Kept as it was.")).ok()
        document_id = uuid.UUID(created["createDocument"]["id"])
        await wait_for_status(server, account.access_token, str(document_id))
    # One connection, so the statement after the failure would run on the same one.
    single = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    engine = make_engine(database_url, single)
    status_sql = text("SELECT status, chunk_count, updated_at FROM documents WHERE id = :id")
    try:
        sessions = make_sessionmaker(engine)
        async with sessions() as session:
            before = (await session.execute(status_sql, {"id": document_id})).one()
        wrong = chunk_copy_payload(
            document_id,
            [ChunkDraft(ordinal=0, content="Replaced?", heading_path=(), page=None, token_count=2)]
            * 2,
            [[1.0, 0.0], [0.0, 1.0]],  # not the column's dimensions: the COPY fails
        )
        with pytest.raises(asyncpg.PostgresError):
            async with sessions.begin() as session:
                await DocumentRepository(session).store_chunks(document_id, wrong, 2)
        async with sessions() as session:
            after = (await session.execute(status_sql, {"id": document_id})).one()
            contents = list(
                await session.scalars(
                    text("SELECT content FROM chunks WHERE document_id = :id"),
                    {"id": document_id},
                )
            )
            # A vector parameter, bound as text as every statement binds it.
            dimensions = await session.scalar(
                select(func.vector_dims(cast(literal([3.0, 4.0], Vector()), Vector())))
            )
    finally:
        await engine.dispose()

    assert contents == ["Kept as it was."]
    assert after == before
    assert before[0] == "READY"
    assert before[1] == 1
    assert dimensions == 2


async def _end_a_waiting_statement(database_url: str, table: str, mode: str) -> int:
    """Once the worker has registered itself, holds a lock on ``table`` until a statement of
    the worker waits for it, ends the worker's connections that wait, then lets go: how many
    ended."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with asyncio.timeout(60):
            # (the state lives in the database: there is no event to await)
            while not await conn.fetchval("SELECT count(*) FROM procrastinate_workers"):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        async with conn.transaction(), asyncio.timeout(60):
            await conn.execute(f"LOCK TABLE {table} IN {mode} MODE")
            while True:
                ended: int = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'ragstream-worker'"
                    " AND datname = current_database() AND wait_event_type = 'Lock'"
                )
                if ended:
                    return ended
                await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def _no_recovery(*_: object) -> None:
    await asyncio.Event().wait()  # until cancelled, as the recovery loop runs


async def test_the_worker_comes_back_after_its_connection_ends_mid_query(
    settings: Settings,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose fetch of a job fails (the server ended its connection mid-query: a
    restart, an administrator) stops, as procrastinate stops one whose fetch, heartbeat or
    listener fails; another takes its place, and documents are ingested all the same."""
    # Its fetches are the only statements on the job table: no recovery rounds.
    monkeypatch.setattr(jobs, "_recovery_loop", _no_recovery)
    polling = settings.model_copy(update={"ingestion_poll_seconds": 0.1})
    async with running_server(polling) as server:
        account = await server.register()
        # when the connection of the worker's fetch is ended while the fetch waits (on the
        # job table, which nothing else of the worker reads once it has started)
        ended = await _end_a_waiting_statement(
            database_url, "procrastinate_jobs", "ACCESS EXCLUSIVE"
        )
        # then a new document is ingested all the same
        document = await ingest_text(server, account.access_token, "After the cut.")

    assert ended
    assert document["chunkCount"] == 1
    assert "the ingestion worker stopped" in caplog.text


async def test_a_worker_whose_heartbeat_fails_is_replaced(
    settings: Settings,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker whose heartbeat cannot be written would look stalled while it runs, and the
    recovery would retry its jobs: it is stopped and replaced instead."""
    monkeypatch.setattr(jobs, "_recovery_loop", _no_recovery)
    beating = _beating(settings)
    async with running_server(beating) as server:
        account = await server.register()
        # when the connection of its heartbeat is ended while the heartbeat waits (on the
        # workers' table, which a fetch with no job to take does not write)
        ended = await _end_a_waiting_statement(database_url, "procrastinate_workers", "SHARE")
        # then it is replaced, and a new document is ingested
        await eventually(lambda: _logged(caplog, "the ingestion worker stopped"))
        document = await ingest_text(server, account.access_token, "After the beat.")

    assert ended
    assert document["chunkCount"] == 1
    assert "the heartbeat took longer" not in caplog.text  # it failed, it did not hang


def _beating(settings: Settings) -> Settings:
    """A heartbeat every 2 s, which may take 1 s."""
    return settings.model_copy(
        update={
            "ingestion_poll_seconds": 0.1,
            "ingestion_stalled_seconds": 12.0,
            "ingestion_shutdown_timeout_seconds": 0.2,
        }
    )


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def test_a_worker_whose_heartbeat_hangs_on_a_lock_is_replaced(
    settings: Settings,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A heartbeat that waits on a lock (nothing ends its connection) fails after its
    timeout: the worker is stopped and replaced before it looks stalled."""
    monkeypatch.setattr(jobs, "_recovery_loop", _no_recovery)
    beating = _beating(settings)
    async with running_server(beating) as server:
        account = await server.register()
        locker = await asyncpg.connect(asyncpg_dsn(database_url))
        watcher = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            await eventually(lambda: _registered(watcher))
            # when the workers' table is locked against the heartbeat's update, and stays so
            async with locker.transaction():
                await locker.execute("LOCK TABLE procrastinate_workers IN SHARE MODE")
                caplog.clear()
                await eventually(lambda: _waiting_on_a_lock(watcher))
                # then the heartbeat gives up, which stops its worker (once it could leave the
                # workers' table)
                await eventually(lambda: _logged(caplog, "the heartbeat took longer than 1 s"))
        finally:
            await locker.close()
            await watcher.close()
        await eventually(lambda: _logged(caplog, "the ingestion worker stopped"))
        # and another one ingests the next document
        document = await ingest_text(server, account.access_token, "After the wait.")

    assert document["chunkCount"] == 1


async def _registered(conn: asyncpg.Connection) -> bool:
    return bool(await conn.fetchval("SELECT count(*) FROM procrastinate_workers"))


async def _waiting_on_a_lock(conn: asyncpg.Connection) -> bool:
    waiting = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ragstream-worker'"
        " AND datname = current_database() AND wait_event_type = 'Lock'"
    )
    return bool(waiting)


async def test_the_worker_goes_on_after_its_connections_are_ended(settings: Settings) -> None:
    """The job queue's pooled connections ended by the server (a restart, an administrator)
    are noticed when handed out, without a query, and replaced: the next document is
    ingested all the same."""
    polling = settings.model_copy(update={"ingestion_poll_seconds": 0.1})
    async with running_server(polling) as server:
        account = await server.register()
        first = (await create(server, account.access_token, "Before the cut.")).ok()
        await wait_for_status(server, account.access_token, first["createDocument"]["id"])
        ended = await _scalar(
            server,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'ragstream-worker' AND datname = current_database()",
        )
        document = await ingest_text(server, account.access_token, "After the cut.")

    assert ended
    assert document["chunkCount"] == 1
