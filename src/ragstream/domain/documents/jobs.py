"""Durable ingestion jobs on procrastinate (PostgreSQL-backed, LISTEN/NOTIFY, retries, locks).

Jobs are deferred in the same transaction as their document (see db/repositories/jobs.py).
A worker runs inside `ragstream serve` by default and in `ragstream worker` processes. The
recovery loop guarantees that no document stays PENDING or PROCESSING forever: jobs of workers
that stopped sending heartbeats (a crash, a killed container) are retried, and unfinished
documents without any job get a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import procrastinate
import psycopg
import psycopg_pool
from procrastinate import JobContext, RetryStrategy
from procrastinate.worker import Worker
from sqlalchemy.engine import make_url

from ragstream.db.repositories.documents import DocumentRepository
from ragstream.db.repositories.jobs import INGEST_TASK, INGESTION_QUEUE, JobRepository
from ragstream.domain.documents.pipeline import (
    IngestionDeps,
    RetryableIngestionError,
    ingest_document,
    mark_failed,
    mark_retrying,
)
from ragstream.settings import Settings

logger = logging.getLogger(__name__)
# How much longer than the jobs' grace a stopping worker gets to leave before it is cancelled.
STOP_MARGIN_SECONDS = 5.0
# Seconds before a worker that stopped by itself is replaced: the first pause, the longest
# (doubling in between), and how long a worker must have run for the next pause to be the
# first again.
RESTART_PAUSES = (0.5, 30.0, 60.0)


def libpq_conninfo(database_url: str) -> str:
    """The SQLAlchemy URL (``postgresql+asyncpg://...``) as a libpq URI for psycopg."""
    url = make_url(database_url).set(drivername="postgresql")
    query = dict(url.query)
    if "ssl" in query and "sslmode" not in query:  # asyncpg spells it differently
        query["sslmode"] = query.pop("ssl")
    return url.set(query=query).render_as_string(hide_password=False)


async def _still_connected(connection: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check of a connection it hands out, without a round trip.

    procrastinate's own check sends an empty query each time, and its queries ran in a
    transaction of their own: three round trips for each of a job's fetch and finish. An idle
    connection has nothing to read; one that has (the server's goodbye when it ended the
    backend, or the end of the stream) is closed, and the pool hands out another.
    """
    if connection.closed or connection.broken:
        raise psycopg.OperationalError("the connection is closed")
    readable, _, _ = select.select([connection.fileno()], [], [], 0)
    if readable:
        await connection.close()  # the pool drops a closed connection and opens another
        raise psycopg.OperationalError("the server ended the connection")


# TCP keepalives and a limit on unacknowledged data: a connection whose server went away
# without a word (a crashed host, a dropped route) fails within about a minute instead of
# the kernel's quarter of an hour, so a stopping worker can leave and be replaced. (libpq
# ignores them over a Unix-domain socket.)
JOB_CONNECTION_OPTIONS: dict[str, Any] = {
    "application_name": "ragstream-worker",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,  # milliseconds
}


def _job_pool(**options: Any) -> psycopg_pool.AsyncConnectionPool[Any]:
    return psycopg_pool.AsyncConnectionPool(**{**options, "check": _still_connected})


async def _autocommit(connection: psycopg.AsyncConnection[Any]) -> None:
    # Every procrastinate query is one statement (a function call): it needs no BEGIN/COMMIT.
    await connection.set_autocommit(True)


def build_job_app(settings: Settings, database_url: str, deps: IngestionDeps) -> procrastinate.App:
    """A procrastinate app with the ingestion task bound to ``deps`` (nothing global)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=libpq_conninfo(database_url),
        min_size=1,
        max_size=settings.ingestion_concurrency + 3,
        kwargs=JOB_CONNECTION_OPTIONS,
        configure=_autocommit,
        pool_factory=_job_pool,
    )
    app = procrastinate.App(connector=connector)
    attempts = max(1, settings.ingestion_max_attempts)

    async def ingest(context: JobContext, document_id: str) -> None:
        started = time.perf_counter()
        deps.metrics.ingestion_started()
        outcome = "retry"  # raised: the queue tries again
        try:
            with deps.tracing.span("ingestion.job", **{"document.id": document_id}):
                outcome = await run(context, uuid.UUID(document_id))
        finally:
            deps.metrics.ingestion_ended(outcome, time.perf_counter() - started)

    async def run(context: JobContext, doc_id: uuid.UUID) -> str:
        """One attempt; returns how it ended (ready, failed, gone) or raises to be retried."""
        assert context.job is not None
        final = context.job.attempts >= attempts - 1
        try:
            status = await ingest_document(deps, doc_id)
        except RetryableIngestionError as exc:
            if final:
                await mark_failed(deps, doc_id, f"{exc}; gave up after {attempts} attempts")
                return "failed"
            logger.warning("document %s: %s; will retry", doc_id, exc)
            await mark_retrying(deps, doc_id)
            raise
        except Exception:
            logger.exception("ingestion of document %s failed", doc_id)
            if final:
                await mark_failed(
                    deps, doc_id, "ingestion failed unexpectedly; reprocess the document to retry"
                )
                return "failed"
            await mark_retrying(deps, doc_id)
            raise
        return status.lower() if status is not None else "gone"

    app.task(
        name=INGEST_TASK,
        queue=INGESTION_QUEUE,
        pass_context=True,
        retry=RetryStrategy(
            max_attempts=attempts - 1,
            exponential_wait=max(1, settings.ingestion_retry_base_seconds),
        ),
    )(ingest)
    return app


async def recover(app: procrastinate.App, deps: IngestionDeps, settings: Settings) -> int:
    """Retry jobs of dead workers and queue a job for every orphaned unfinished document."""
    recovered = 0
    stalled = await app.job_manager.get_stalled_jobs(
        queue=INGESTION_QUEUE, seconds_since_heartbeat=settings.ingestion_stalled_seconds
    )
    for job in stalled:
        try:
            await app.job_manager.retry_job(job)
            recovered += 1
            logger.warning("retrying ingestion job %s left behind by a stopped worker", job.id)
        except Exception:  # e.g. it finished meanwhile; the next round looks again
            logger.info("could not retry stalled job %s", job.id, exc_info=True)
    async with deps.sessionmaker.begin() as session:
        unfinished = await DocumentRepository(session).unfinished_ids()
        jobs = JobRepository(session)
        for document_id in await jobs.without_live_job(unfinished):
            if await jobs.enqueue_ingestion(document_id):
                recovered += 1
                logger.warning("queued ingestion again for orphaned document %s", document_id)
    return recovered


async def _recovery_loop(app: procrastinate.App, deps: IngestionDeps, settings: Settings) -> None:
    while True:
        try:
            await recover(app, deps, settings)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database may be restarting; try again next round
            logger.warning("ingestion recovery failed; retrying later", exc_info=True)
        await asyncio.sleep(settings.ingestion_recovery_interval_seconds)


def worker_options(settings: Settings) -> dict[str, Any]:
    stalled = settings.ingestion_stalled_seconds
    # Heartbeats and the grace fit in the stalled time (settings.check_ingestion_timing).
    return {
        "queues": [INGESTION_QUEUE],
        "concurrency": max(1, settings.ingestion_concurrency),
        "name": "ragstream-ingestion",
        # Signals stop the supervisor (`running_worker`), not one worker it would replace.
        "install_signal_handlers": False,
        "shutdown_graceful_timeout": settings.ingestion_shutdown_timeout_seconds,
        "delete_jobs": "successful",
        "fetch_job_polling_interval": settings.ingestion_poll_seconds,
        "update_heartbeat_interval": settings.ingestion_heartbeat_seconds,
        "heartbeat_timeout": settings.ingestion_heartbeat_timeout_seconds,
        "stalled_worker_timeout": stalled,
    }


# What `_WatchedWorker` overrides.
if not all(hasattr(Worker, name) for name in ("_periodic_deferrer", "_update_heartbeat")):
    raise ImportError("this procrastinate's Worker lacks a method _WatchedWorker overrides")


class _WatchedWorker(Worker):
    """procrastinate's worker, its side tasks watched for as long as it runs.

    procrastinate stops a worker when one of its side tasks (the heartbeat, the notification
    listener) fails, but watches them only until the first one ends, and the periodic
    deferrer ends at once when there is no periodic task, as here. A failed heartbeat then went
    unnoticed: the worker ran on with a stale one, and once it looked stalled the recovery
    could retry a job it was still running. Kept waiting here, the deferrer keeps the watch on
    until the worker's shutdown cancels it.

    A heartbeat that hangs rather than fails (waiting on a lock, for a pooled connection, on a
    server gone without closing the connection) fails after ``heartbeat_timeout`` seconds, so
    that the worker stops then too, before it looks stalled.
    """

    def __init__(self, *, heartbeat_timeout: float, **options: Any) -> None:
        super().__init__(**options)
        self._heartbeat_timeout = heartbeat_timeout

    async def _periodic_deferrer(self) -> None:
        await super()._periodic_deferrer()  # type: ignore[no-untyped-call]  # untyped upstream
        await asyncio.Event().wait()

    async def _update_heartbeat(self) -> None:
        assert self.worker_id is not None
        while True:
            await asyncio.sleep(self.update_heartbeat_interval)
            beat = asyncio.ensure_future(self.app.job_manager.update_heartbeat(self.worker_id))
            try:
                done, _ = await asyncio.wait({beat}, timeout=self._heartbeat_timeout)
            except asyncio.CancelledError:
                _abandon(beat)
                raise
            if not done:
                # Failed at once: the driver's cancelling of the statement (which, on a server
                # that is gone, can take seconds) goes on without holding up the stop.
                _abandon(beat)
                raise TimeoutError(f"the heartbeat took longer than {self._heartbeat_timeout:g} s")
            beat.result()


_abandoned: set[asyncio.Future[Any]] = set()


def _abandon(task: asyncio.Future[Any]) -> None:
    """Cancels ``task`` and leaves it to end by itself, its outcome read (so never logged as
    an exception nobody retrieved), and kept from the garbage collector meanwhile."""
    task.cancel()
    _abandoned.add(task)

    def ended(done: asyncio.Future[Any]) -> None:
        _abandoned.discard(done)
        if not done.cancelled():
            done.exception()

    task.add_done_callback(ended)


class SupervisedWorker:
    """procrastinate workers, one after another, until asked to stop.

    procrastinate stops a worker whose fetch of a job or whose heartbeat fails
    (`_WatchedWorker`), or whose notification listener cannot reconnect: a connection the
    server ends mid-query (a restart, a failover, an administrator) is enough. Left at that,
    the process would ingest nothing more until it is restarted. A worker that stops without
    being asked to is replaced by a new one, registered afresh, after a pause
    (`RESTART_PAUSES`) that doubles while workers keep stopping. A stopping worker has shut
    itself down first (given its running jobs their grace, had the rest retried, left the
    workers' table); jobs it could not give back are retried once its heartbeat is stale
    (`recover`).
    """

    def __init__(self, app: procrastinate.App, options: dict[str, Any]) -> None:
        self._app = app
        self._options = options
        self._stop = asyncio.Event()
        self._worker: Worker | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """The running worker finishes its jobs (they get its grace), and none follows it."""
        self._stop.set()
        if self._worker is not None:
            self._worker.stop()  # type: ignore[no-untyped-call]  # untyped upstream

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        first, longest, steady = RESTART_PAUSES
        pause = first
        while not self.stopping:
            # Created and started in one step: a stop asked for from here on reaches it.
            worker = self._worker = _WatchedWorker(app=self._app, **self._options)
            started = loop.time()
            try:
                await worker.run()  # type: ignore[no-untyped-call]  # untyped upstream
            except Exception:
                if self.stopping:
                    raise
                logger.error("the ingestion worker stopped on an error", exc_info=True)
            if self.stopping:
                return
            if loop.time() - started >= steady:
                pause = first
            logger.error("the ingestion worker stopped; another starts in %.1f s", pause)
            with contextlib.suppress(TimeoutError):  # a stop ends the pause
                await asyncio.wait_for(self._stop.wait(), pause)
            pause = min(pause * 2, longest)


@contextlib.contextmanager
def _stopped_by_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM call ``stop``, the first of them only. After it SIGTERM has the
    handler it had before (by default: the process ends at once) and SIGINT Python's own
    (KeyboardInterrupt at once, where asyncio.run's would only cancel the main task, which
    the worker turns into the same graceful stop)."""
    loop = asyncio.get_running_loop()
    numbers = (signal.SIGINT, signal.SIGTERM)
    before = {number: signal.getsignal(number) for number in numbers}
    installed: list[signal.Signals] = []

    def restore() -> None:
        while installed:
            number = installed.pop()
            loop.remove_signal_handler(number)
            handler = before[number]
            if number == signal.SIGINT:
                handler = signal.default_int_handler
            if handler is not None:  # None: set outside Python, left as asyncio leaves it
                signal.signal(number, handler)

    stopped = False

    def on_signal(number: signal.Signals) -> None:
        # Handlers back first: a signal that comes once ``stop`` has logged is a second one.
        nonlocal stopped
        restore()
        if stopped:  # a second one, handled in the same turn of the loop as the first
            signal.raise_signal(number)
            return
        stopped = True
        stop()

    try:
        for number in numbers:
            loop.add_signal_handler(number, on_signal, number)
            installed.append(number)
        yield
    finally:
        restore()


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, database_url: str, deps: IngestionDeps, *, in_process: bool = True
) -> AsyncIterator[asyncio.Task[None]]:
    """Run a supervised worker and the recovery loop in the background until the block exits.

    On exit running jobs get ``ingestion_shutdown_timeout_seconds`` to finish; the rest are
    aborted and retried by the next worker. Not ``in_process`` (a `ragstream worker`
    process), SIGINT or SIGTERM stops it the same way; a second one acts as if it had not
    been handled (SIGTERM ends the process at once: its running jobs are retried by another
    worker once its heartbeat is stale).
    """
    app = build_job_app(settings, database_url, deps)
    async with app.open_async():
        supervisor = SupervisedWorker(app, worker_options(settings))
        running = asyncio.create_task(supervisor.run(), name="ingestion-worker")
        recovery = asyncio.create_task(_recovery_loop(app, deps, settings), name="recovery")

        def stop_on_signal() -> None:
            logger.info("stopping the ingestion worker once its jobs are done")
            supervisor.stop()

        try:
            with contextlib.nullcontext() if in_process else _stopped_by_signals(stop_on_signal):
                yield running
        finally:
            recovery.cancel()
            # Asked to stop rather than cancelled: a worker cancelled while it registers itself
            # can hang in its database call; stopped, it finishes registering, then its jobs
            # get the grace, then it leaves. Cancelled only if it does not.
            supervisor.stop()
            grace = settings.ingestion_shutdown_timeout_seconds + STOP_MARGIN_SECONDS
            await asyncio.wait({running}, timeout=grace)
            running.cancel()
            await asyncio.gather(recovery, running, return_exceptions=True)
