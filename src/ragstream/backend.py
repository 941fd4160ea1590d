"""What every process that works on the data shares: the database, its pool, the embedder and
the event broker.

The server's state extends it (`AppState`) with what answering requests needs (the schema,
tokens, the chat); the commands without HTTP (`migrate`, `worker`, `ingest`, `reindex`,
`create-admin`) use it alone, so they need no JWT secret and build no schema.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ragstream.db.embedded import EarlyStart, EmbeddedDatabase, start_embedded
from ragstream.db.engine import make_engine, make_sessionmaker
from ragstream.domain.events import EventBroker, InMemoryBroker
from ragstream.domain.llm.embeddings import Embedder
from ragstream.domain.llm.providers import build_embedder
from ragstream.domain.retrieval.service import SideSessions
from ragstream.observability.metrics import Metrics
from ragstream.observability.pool import metered_pool_class
from ragstream.observability.providers import observed_embedder
from ragstream.observability.tracing import Tracing
from ragstream.settings import ConfigurationError, Settings
from ragstream.workpool import SERVING_NICENESS, WorkPool

if TYPE_CHECKING:
    from ragstream.db.notify import PgBroker
    from ragstream.redis_events import RedisBroker


@dataclass(kw_only=True)
class Backend:
    """The database and its collaborators, set up by `connect`."""

    settings: Settings
    engine: AsyncEngine | None = None
    sessionmaker_: async_sessionmaker[AsyncSession] | None = None
    # One connection of its own for this process's lease (chat/ownership.py): renewing it
    # never waits behind requests for the pool, so an overloaded process keeps its answers.
    lease_engine: AsyncEngine | None = None
    lease_sessionmaker_: async_sessionmaker[AsyncSession] | None = None
    # Connections of their own for the full-text half of `search` queries, beside the vector
    # half (domain/retrieval/service.py): never taken from the requests' pool.
    side_engine: AsyncEngine | None = None
    search_sides: SideSessions = field(default_factory=SideSessions)
    embedded: EmbeddedDatabase | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    database_url: str | None = None
    embedder_: Embedder | None = None
    # Worker processes for CPU-heavy work (parsing, chunking, offline embedding).
    work_: WorkPool | None = None
    # Pub/sub (document events, chat requests between processes): in-process until
    # `shared_events` puts PostgreSQL LISTEN/NOTIFY in its place (the server does).
    broker: EventBroker = field(default_factory=InMemoryBroker)
    # Prometheus metrics, or a recorder that records nothing when they are off.
    metrics: Metrics = field(default_factory=Metrics)
    # OpenTelemetry spans, or a tracer that traces nothing when tracing is off.
    tracing: Tracing = field(default_factory=Tracing)

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self.sessionmaker_ is None:
            raise RuntimeError("the database is not connected yet")
        return self.sessionmaker_

    @property
    def lease_sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self.lease_sessionmaker_ is None:
            raise RuntimeError("the database is not connected yet")
        return self.lease_sessionmaker_

    @property
    def work(self) -> WorkPool:
        if self.work_ is None:
            raise RuntimeError("the worker processes are not set up yet")
        return self.work_

    @property
    def embedder(self) -> Embedder:
        if self.embedder_ is None:
            raise RuntimeError("the embedding provider is not set up yet")
        return self.embedder_


async def check_pgvector(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        available = await conn.scalar(
            text("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
        )
    if not available:
        raise ConfigurationError(
            "the configured PostgreSQL has no pgvector extension; install pgvector "
            "(e.g. use the pgvector/pgvector image) or unset RAGSTREAM_DATABASE_URL"
        )


@contextlib.asynccontextmanager
async def connect(
    backend: Backend,
    *,
    migrate: bool = True,
    early: EarlyStart | None = None,
    work_niceness: int = SERVING_NICENESS,
) -> AsyncIterator[None]:
    """Start (or reach) the database, migrate it and open the pool; undo all of it on exit.

    ``early``: the embedded server for the data dir, already starting (serve starts it while
    it imports the rest); it is taken over, and stopped on exit all the same.
    ``work_niceness``: how much nicer than this process the worker processes run (see workpool).
    """
    from ragstream.db.migrate import at_head, upgrade_to_head

    settings = backend.settings
    url = settings.database_url
    if url is None:
        backend.embedded = (
            await early.take()
            if early is not None
            else await asyncio.to_thread(start_embedded, settings.data_dir)
        )
        url = backend.embedded.url()
    metrics = backend.metrics
    backend.engine = make_engine(
        url, settings, poolclass=metered_pool_class(metrics) if metrics.enabled else None
    )
    backend.tracing.observe_engine(backend.engine)
    try:
        await check_pgvector(backend.engine)
        if migrate and not await at_head(backend.engine):
            await asyncio.to_thread(
                upgrade_to_head, url, embedding_dimensions=settings.embedding_dimensions
            )
        backend.database_url = url
        backend.sessionmaker_ = make_sessionmaker(backend.engine)
        backend.lease_engine = make_engine(url, settings, size=1)
        backend.lease_sessionmaker_ = make_sessionmaker(backend.lease_engine)
        if settings.search_side_connections > 0:
            sides = settings.search_side_connections
            backend.side_engine = make_engine(url, settings, size=sides)
            backend.search_sides = SideSessions(make_sessionmaker(backend.side_engine), sides)
        # Processes start with the first job, not here.
        backend.work_ = WorkPool(settings.work_processes, niceness=work_niceness)
        backend.embedder_ = observed_embedder(
            build_embedder(settings, backend.work_), backend.tracing
        )
        yield
    finally:
        for task in list(backend.background):
            task.cancel()
        await asyncio.gather(*backend.background, return_exceptions=True)
        if backend.embedder_ is not None:
            await backend.embedder_.aclose()
        if backend.work_ is not None:
            backend.work_.shutdown()
        if backend.lease_engine is not None:
            await backend.lease_engine.dispose()
        if backend.side_engine is not None:
            await backend.side_engine.dispose()
        await backend.engine.dispose()
        if backend.embedded is not None:
            await asyncio.to_thread(backend.embedded.stop)


@contextlib.asynccontextmanager
async def shared_events(backend: Backend, *, listen: bool = True) -> AsyncIterator[None]:
    """Events reach every process on the database for the block's duration: through Redis
    Streams when `RAGSTREAM_REDIS_URL` is set, else through LISTEN/NOTIFY. ``listen=False``:
    this process only publishes (it has no subscribers), and hears nothing of the others."""
    if backend.database_url is None:
        raise RuntimeError("the database is not connected yet")
    broker: PgBroker | RedisBroker
    timeout = backend.settings.db_pool_timeout
    if backend.settings.redis_url:
        from ragstream.redis_events import RedisBroker

        broker = RedisBroker(backend.settings.redis_url, connect_timeout=timeout, listen=listen)
    else:
        from ragstream.db.notify import PgBroker, asyncpg_dsn

        broker = PgBroker(asyncpg_dsn(backend.database_url), connect_timeout=timeout, listen=listen)
    await broker.start()
    previous, backend.broker = backend.broker, broker
    try:
        yield
    finally:
        backend.broker = previous
        await broker.close()
