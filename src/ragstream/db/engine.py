"""Engine and session factory, built in the app lifespan (never at import)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import Pool

from ragstream.settings import Settings

logger = logging.getLogger(__name__)


def make_engine(
    url: str, settings: Settings, *, poolclass: type[Pool] | None = None, size: int | None = None
) -> AsyncEngine:
    """The engine of ``url``: a pool of the settings' size, or of exactly ``size`` connections
    (no overflow) when given."""
    # A pool class of its own only when asked (metrics count checkouts that wait).
    extra: dict[str, Any] = {"poolclass": poolclass} if poolclass is not None else {}
    return create_async_engine(
        url,
        **extra,
        pool_size=settings.db_pool_size if size is None else size,
        max_overflow=settings.db_max_overflow if size is None else 0,
        pool_timeout=settings.db_pool_timeout,
        # No ping on checkout (three round trips per request): a connection killed by a
        # database restart fails its first statement and is invalidated with the rest of the
        # pool; `Context.viewer` retries that first read once (see schema/context.py).
        # Statement parameters (document text, password and token hashes) stay out of errors
        # and so out of the logs.
        hide_parameters=True,
        connect_args={
            "server_settings": {
                "statement_timeout": str(settings.db_statement_timeout_ms),
                "application_name": "ragstream",
            },
            "timeout": settings.db_pool_timeout,
        },
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


AUTOCOMMIT = {"isolation_level": "AUTOCOMMIT"}


async def wait_for_connection(
    session: AsyncSession, attempts: int, what: str, *, autocommit: bool = False
) -> None:
    """Checks out ``session``'s connection, waiting through up to ``attempts`` pool timeouts.

    For work already under way (an admitted answer's retrieval and end): a busy pool delays
    it instead of failing it; the connections in use come back within a statement timeout.
    The last timeout is raised. With ``autocommit``, each statement of the session is its
    own transaction: no BEGIN and no COMMIT, for work that is one statement.
    """
    for attempt in range(1, attempts + 1):
        try:
            await session.connection(execution_options=AUTOCOMMIT if autocommit else None)
            return
        except PoolTimeout:
            if attempt == attempts:
                raise
            logger.warning("waiting for a database connection for %s (pool exhausted)", what)
