"""`ragstream serve --workers N`: one supervisor, N server processes on one port.

The supervisor (this process) starts the embedded PostgreSQL once (when no database URL is
configured), migrates it, interrupts what a crash left running, binds the port, and runs N
worker processes through uvicorn's multiprocess supervisor. Each worker is a full server on
the shared socket (the kernel spreads connections between them) with its own pool, lease and
event connection; they reach each other through the database (LISTEN/NOTIFY). The
supervisor replaces a worker that dies, restarts them one by one on SIGHUP, and on SIGTERM or
SIGINT stops them gracefully (each lets its answers finish within the grace period) before it
stops the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from ragstream.db.embedded import EarlyStart
    from ragstream.settings import Settings

STARTUP_FAILURE = 3  # uvicorn's exit status for a server that could not start
logger = logging.getLogger("ragstream")


def worker_count(value: str) -> int:
    """``auto``: one per core this process may run on; else a positive number."""
    if value == "auto":
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    count = int(value)
    if count < 1:
        raise ValueError("the number of workers must be at least 1")
    return count


def worker_app() -> Starlette:
    """The application of one worker process (uvicorn calls it in each of them)."""
    from ragstream.app import create_app
    from ragstream.observability.logs import configure_command_logging, configure_logging
    from ragstream.settings import Settings

    settings = Settings()
    configure_command_logging()  # as `ragstream serve` has it before it configures its own
    configure_logging(str(settings.log_format), settings.log_level)
    uvicorn_log = logging.getLogger("uvicorn.error")  # its start-up lines: as serve has them
    uvicorn_log.setLevel(max(logging.WARNING, uvicorn_log.level))
    if settings.log_requests:  # ragstream writes each request's line: none from uvicorn
        access = logging.getLogger("uvicorn.access")
        access.handlers.clear()
        access.propagate = False
    return create_app(settings)


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's configuration of a ragstream server, one process or several."""
    from ragstream.ws_compression import WebSocketProtocol

    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        # Logging is configured in cmd_serve (JSON or text); each request gets ragstream's line.
        "log_config": None,
        "access_log": not settings.log_requests,
        "proxy_headers": False,
        "lifespan": "on",
        # Larger frames are refused while read (1009); the app checks the same limit.
        "ws_max_size": settings.ws_message_limit,
        # permessage-deflate as negotiated, small messages (streamed tokens) uncompressed.
        "ws": WebSocketProtocol,
    }


def serving_banner(
    settings: Settings, host: str, port: int, *, embedded: bool, embeddings: str, processes: int
) -> str:
    """Where the server listens and what it runs with, in one block."""
    url = f"http://{host}:{port}/graphql"
    graphiql = f"{url} (open it in a browser)" if settings.graphiql_enabled else "off"
    database = "embedded PostgreSQL" if embedded else "RAGSTREAM_DATABASE_URL"
    chat = f"openai ({settings.chat_model})" if settings.chat_provider == "openai" else "extractive"
    ingestion = (
        f"ingestion in {'each server process' if processes > 1 else 'this process'}, "
        f"{settings.ingestion_concurrency} jobs at a time"
        if settings.ingestion_worker
        else "ingestion by `ragstream worker` processes only"
    )
    servers = (
        f"{processes} server processes (supervisor pid {os.getpid()}), " if processes > 1 else ""
    )
    return "\n".join(
        [
            f"ragstream is serving GraphQL at {url}",
            f"  GraphiQL   {graphiql}",
            f"  data dir   {settings.data_dir} (database: {database})",
            f"  providers  chat {chat}, embeddings {embeddings}",
            f"  workers    {servers}{ingestion}",
        ]
    )


def serve_workers(settings: Settings, early: EarlyStart | None, workers: int) -> int:
    """Serves with ``workers`` processes until SIGTERM or SIGINT; returns the exit status."""
    from ragstream.db.migrate import upgrade_to_head

    embedded = asyncio.run(early.take()) if early is not None else None
    try:
        url = embedded.url() if embedded is not None else settings.database_url
        assert url is not None
        upgrade_to_head(url, embedding_dimensions=settings.embedding_dimensions)
        if embedded is not None:  # serve holds the data-dir lock: no other server runs on it
            asyncio.run(_interrupt_left_answers(url, settings))
        # The workers inherit the environment: they join this database and never stop it.
        os.environ["RAGSTREAM_DATABASE_URL"] = url
        with _shared_metrics(settings):
            return _supervise(settings, workers)
    finally:
        if embedded is not None:
            embedded.stop()


@contextlib.contextmanager
def _shared_metrics(settings: Settings) -> Iterator[None]:
    """With metrics on, the workers write them to one fresh folder that `/metrics` merges (any
    worker answers for all); an operator's own ``PROMETHEUS_MULTIPROC_DIR`` is used as given."""
    from ragstream.observability.metrics import MULTIPROC_ENV

    if not settings.metrics_enabled or os.environ.get(MULTIPROC_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="ragstream-metrics-") as folder:
        os.environ[MULTIPROC_ENV] = folder
        try:
            yield
        finally:
            del os.environ[MULTIPROC_ENV]


def _supervise(settings: Settings, workers: int) -> int:
    """Binds the port and runs the worker processes until they are stopped."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        "ragstream.workers:worker_app",
        factory=True,
        workers=workers,
        **server_options(settings),
        # A worker imports, migrates and connects before it is ready (restarts wait).
        timeout_worker_healthcheck=60,
    )
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.setLevel(max(logging.WARNING, uvicorn_log.level))
    sock = config.bind_socket()
    host, port = sock.getsockname()[:2]
    supervisor = Multiprocess(config, sockets=[sock])
    from ragstream.domain.llm.providers import build_embedder

    banner = serving_banner(
        settings,
        host,
        port,
        embedded=settings.database_url is None,
        embeddings=build_embedder(settings).name,
        processes=workers,
    )
    logger.info("%s", banner)
    supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    logger.info("ragstream stopped")
    return STARTUP_FAILURE if failed else 0


async def _interrupt_left_answers(url: str, settings: Settings) -> None:
    from ragstream.db.engine import make_engine, make_sessionmaker
    from ragstream.db.repositories.processes import ProcessRepository

    engine = make_engine(url, settings)
    try:
        async with make_sessionmaker(engine).begin() as session:
            repository = ProcessRepository(session)
            await repository.forget_all()
            interrupted = await repository.interrupt_orphans()
        if interrupted:
            logger.warning("marked %d unfinished answers as INTERRUPTED", len(interrupted))
    finally:
        await engine.dispose()
