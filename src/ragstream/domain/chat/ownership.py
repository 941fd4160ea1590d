"""Ownership of running answers across server processes: a lease per process.

Every `ragstream serve` process registers itself in the database with a lease and renews it
every third of `chat_lease_seconds`; each answer it starts names it as its generator. At each
renewal the process also sweeps: the running answers of processes whose lease has expired (a
process killed without a shutdown) become INTERRUPTED with the text saved so far. So a killed
process's answers are INTERRUPTED at most `chat_lease_seconds` plus a third of it after its last
renewal, by any process still running (or by the next one to start), and a process that
starts never touches the answers of a live one.

The one exception is a server that knows it is alone: `ragstream serve` holding the embedded
database's data-dir lock (no other server can run on it) drops every lease at start-up and so
interrupts what a crash left at once, as a single server always did.

The lease is renewed on a connection of its own when one is given (the server gives one): a
process whose pool is exhausted by requests still renews in time, so other processes never
take it for dead and sweep its live answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.repositories.processes import Generator, ProcessRepository

logger = logging.getLogger(__name__)

Interrupted = Callable[[Sequence[uuid.UUID]], Awaitable[None]]


class Ownership:
    """This process's lease, renewed in the background, and the sweep of expired ones."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        lease_seconds: float,
        on_interrupted: Interrupted,
        lease_sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self.process_id = uuid.uuid4()
        self._sessionmaker = sessionmaker
        # Renewals, sweeps and the release: one connection of their own when given.
        self._leases = lease_sessionmaker or sessionmaker
        self._lease = lease_seconds
        self._on_interrupted = on_interrupted

    @property
    def renew_interval(self) -> float:
        return self._lease / 3

    async def renew_and_sweep(self) -> list[uuid.UUID]:
        """Extends this process's lease, then interrupts the answers of expired ones."""
        async with self._leases.begin() as session:
            await ProcessRepository(session).renew(
                self.process_id, hostname=socket.gethostname(), pid=os.getpid(), lease=self._lease
            )
        async with self._leases.begin() as session:
            interrupted = await ProcessRepository(session).interrupt_orphans()
        if interrupted:
            logger.warning(
                "marked %d answers of stopped server processes as INTERRUPTED", len(interrupted)
            )
            await self._on_interrupted(interrupted)
        return interrupted

    async def generator_of(
        self, message_id: uuid.UUID, session: AsyncSession | None = None
    ) -> Generator:
        """The process generating an answer (read in ``session`` when given)."""
        if session is not None:
            return await ProcessRepository(session).generator_of(message_id)
        async with self._sessionmaker() as own:
            return await ProcessRepository(own).generator_of(message_id)

    @contextlib.asynccontextmanager
    async def running(self, *, alone: bool) -> AsyncIterator[None]:
        """Holds the lease for the duration of the block, and gives it up at the end.

        ``alone``: no other server can be using the database, so every lease left in it is a
        dead process's, dropped before the first sweep.
        """
        if alone:
            async with self._leases.begin() as session:
                await ProcessRepository(session).forget_all()
        await self.renew_and_sweep()
        task = asyncio.create_task(self._keep(), name="chat-lease")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            try:
                async with self._leases.begin() as session:
                    await ProcessRepository(session).release(self.process_id)
            except Exception:  # its answers' ends are stored; the lease then simply expires
                logger.warning("could not release this server's lease", exc_info=True)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                await self.renew_and_sweep()
            except Exception:  # the database is away: try again at the next interval
                logger.warning("could not renew this server's lease", exc_info=True)
