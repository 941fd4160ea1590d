"""The periodic flusher: the text of every running answer, written at a fixed interval.

Deltas only reach memory (`streams.GenerationStream`); this task writes what grew since the
last write, for all running answers in one statement, once per interval. That bounds what a
crash can lose to one interval and keeps the database out of the per-token path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.repositories.chat import MessageRepository
from ragstream.domain.chat.enums import FailureCode
from ragstream.domain.chat.streams import GenerationStream

GONE = str(FailureCode.CONVERSATION_DELETED)  # the stop for an answer whose row was deleted

logger = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        interval: float,
        on_stop_requested: Callable[[uuid.UUID, str], None] | None = None,
        stop_check: float = 1.0,
    ) -> None:
        """``on_stop_requested``: called with an answer and the reason when another process
        asked to stop it (`MessageRepository.request_stop`), or with CONVERSATION_DELETED when
        its row is gone (another process deleted the conversation while the broker could not
        say so): found with each write of the answer's text, and for an answer whose text has
        not been written for ``stop_check`` seconds (still preparing, or its provider silent)
        by a read of its own."""
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._on_stop_requested = on_stop_requested
        self._stop_check = stop_check
        # When each tracked answer's row was last written or checked for a stop (loop time).
        self._looked: dict[uuid.UUID, float] = {}
        self._streams: dict[uuid.UUID, GenerationStream] = {}
        self._written: dict[uuid.UUID, int] = {}  # text length already in the database
        self._grown: set[uuid.UUID] = set()
        self._wake = asyncio.Event()

    def track(self, message_id: uuid.UUID, stream: GenerationStream) -> None:
        self._streams[message_id] = stream
        self._written[message_id] = 0
        self._looked[message_id] = asyncio.get_running_loop().time()

    def grew(self, message_id: uuid.UUID) -> None:
        """The answer's text grew: write it within the next interval."""
        self._grown.add(message_id)
        self._wake.set()

    def forget(self, message_id: uuid.UUID) -> None:
        """The answer's end is stored (or about to be): its partial text no longer matters."""
        self._streams.pop(message_id, None)
        self._written.pop(message_id, None)
        self._looked.pop(message_id, None)
        self._grown.discard(message_id)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Flushes in the background for the duration of the block."""
        task = asyncio.create_task(self._run(), name="chat-flusher")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                # Wake at least every stop_check for the answers not written meanwhile (an
                # answer tracked while this waits sets no wake of its own).
                looking = self._stop_check if self._on_stop_requested else None
                async with asyncio.timeout(looking):
                    await self._wake.wait()
            except TimeoutError:
                await self.check_stops()
                continue
            # Everything that grows during the interval goes into the same write.
            await asyncio.sleep(self._interval)
            self._wake.clear()
            await self.flush()
            await self.check_stops()

    async def check_stops(self) -> None:
        """Reads the stops asked for the tracked answers not written or checked for
        ``stop_check`` seconds (those being written learn of theirs with the write)."""
        if self._on_stop_requested is None:
            return
        now = asyncio.get_running_loop().time()
        due = [i for i, looked in self._looked.items() if now - looked >= self._stop_check]
        if not due:
            return
        try:
            async with self._sessionmaker() as session:
                stops = await MessageRepository(session).requested_stops(due)
        except Exception:
            logger.warning("could not read the stops asked for; retrying", exc_info=True)
            return
        for message_id in due:
            if message_id in self._looked:
                self._looked[message_id] = now
        self._stop(stops)

    def _stop(self, stops: list[tuple[uuid.UUID, str | None]]) -> None:
        if self._on_stop_requested is None:
            return
        for message_id, reason in stops:
            if message_id in self._streams:  # not ended meanwhile
                self._on_stop_requested(message_id, reason or GONE)

    async def flush(self) -> None:
        """Writes the text of every tracked answer that grew since its last write.

        A failed write is logged and retried at the next interval.
        """
        grown, self._grown = self._grown, set()
        batch: list[tuple[uuid.UUID, str]] = []
        for message_id in grown:
            stream = self._streams.get(message_id)
            if stream is None or stream.finished:
                continue
            text = stream.text()
            if len(text) > self._written[message_id]:
                batch.append((message_id, text))
        if not batch:
            return
        try:
            async with self._sessionmaker.begin() as session:
                stops = await MessageRepository(session).save_partial(batch)
        except Exception:
            logger.warning("could not save partial answers; retrying", exc_info=True)
            self._grown |= grown
            self._wake.set()
            return
        now = asyncio.get_running_loop().time()
        for message_id, text in batch:
            if message_id in self._written:  # not forgotten during the write
                self._written[message_id] = len(text)
                self._looked[message_id] = now
        self._stop(stops)
