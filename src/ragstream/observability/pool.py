"""Database pool gauges: connections in use and checkouts waiting, counted as they happen.

Counted by the pool itself rather than read at scrape time, so that `/metrics` in multi-process
mode sums every process's pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from ragstream.observability.metrics import Metrics


def metered_pool_class(metrics: Metrics) -> type[AsyncAdaptedQueuePool]:
    """The async queue pool, counting checkouts that are waiting for a connection.

    A checkout that finds a free connection never yields to the event loop, so a scrape sees
    only the ones that wait (for a connection to come back, or for a new one to open).
    """

    class MeteredPool(AsyncAdaptedQueuePool):
        # QueuePool._do_get calls itself again after a lost race; count each checkout once.
        _getting: set[asyncio.Task[Any] | None]

        def _do_get(self) -> ConnectionPoolEntry:
            if not self._pool.empty():  # an idle connection: taken at once, never waits
                return super()._do_get()
            getting = self.__dict__.setdefault("_getting", set())
            current = asyncio.current_task()  # the checkout's own task, inside its greenlet
            if current in getting:
                return super()._do_get()
            getting.add(current)
            metrics.pool(waiting=1)
            try:
                return super()._do_get()
            finally:
                getting.discard(current)
                metrics.pool(waiting=-1)

    return MeteredPool


def observe_pool(engine: AsyncEngine, metrics: Metrics) -> None:
    """Connections in use, through the pool's checkout and checkin events."""

    def checked_out(*args: Any) -> None:
        metrics.pool(in_use=1)

    def checked_in(*args: Any) -> None:
        metrics.pool(in_use=-1)

    event.listen(engine.sync_engine, "checkout", checked_out)
    event.listen(engine.sync_engine, "checkin", checked_in)
