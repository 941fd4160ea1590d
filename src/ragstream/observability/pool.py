"""Database pool gauges: connections in use and checkouts waiting, counted as they happen.

Counted by the pool itself rather than read at scrape time, so that `/metrics` in multi-process
mode sums every process's pool.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from ragstream.observability.metrics import Metrics


def metered_pool_class(metrics: Metrics) -> type[AsyncAdaptedQueuePool]:
    """The async queue pool, counting the connections it has handed out and the checkouts
    that are waiting for one.

    A connection is in use from the moment the pool hands its record out until the record comes
    back (also when its connection failed to open): the pool's own two methods, which cost less
    per request than listening to its checkout and checkin events. A checkout that finds a free
    connection never yields to the event loop, so a scrape sees only the ones that wait (for a
    connection to come back, or for a new one to open).
    """
    in_use = metrics.pool_in_use
    waiting = metrics.pool_waiting

    class MeteredPool(AsyncAdaptedQueuePool):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Checkouts waiting, by task: QueuePool._do_get calls itself again after a lost
            # race, and that call must not count the checkout a second time.
            self._getting: set[asyncio.Task[Any] | None] = set()

        def _do_get(self) -> ConnectionPoolEntry:
            getting = self._getting
            if getting and asyncio.current_task() in getting:
                return super()._do_get()  # the retry of a checkout counted below
            # An idle connection is taken at once; otherwise the checkout waits.
            record = self._wait_for_record() if self._pool.empty() else super()._do_get()
            in_use(1)
            return record

        def _wait_for_record(self) -> ConnectionPoolEntry:
            current = asyncio.current_task()  # the checkout's own task, inside its greenlet
            self._getting.add(current)
            waiting(1)
            try:
                return super()._do_get()
            finally:
                self._getting.discard(current)
                waiting(-1)

        def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
            in_use(-1)
            super()._do_return_conn(record)

    return MeteredPool
