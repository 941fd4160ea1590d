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
from ragstream.domain.chat.streams import GenerationStream

logger = logging.getLogger(__name__)


class Flusher:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        interval: float,
        on_stop_requested: Callable[[uuid.UUID, str], None] | None = None,
    ) -> None:
        """``on_stop_requested``: called with an answer and the reason when a write finds that
        another process asked to stop it (`MessageRepository.request_stop`)."""
        self._sessionmaker = sessionmaker
        self._interval = interval
        self._on_stop_requested = on_stop_requested
        self._streams: dict[uuid.UUID, GenerationStream] = {}
        self._written: dict[uuid.UUID, int] = {}  # text length already in the database
        self._grown: set[uuid.UUID] = set()
        self._wake = asyncio.Event()

    def track(self, message_id: uuid.UUID, stream: GenerationStream) -> None:
        self._streams[message_id] = stream
        self._written[message_id] = 0

    def grew(self, message_id: uuid.UUID) -> None:
        """The answer's text grew: write it within the next interval."""
        self._grown.add(message_id)
        self._wake.set()

    def forget(self, message_id: uuid.UUID) -> None:
        """The answer's end is stored (or about to be): its partial text no longer matters."""
        self._streams.pop(message_id, None)
        self._written.pop(message_id, None)
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
            await self._wake.wait()
            # Everything that grows during the interval goes into the same write.
            await asyncio.sleep(self._interval)
            self._wake.clear()
            await self.flush()

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
        for message_id, text in batch:
            if message_id in self._written:  # not forgotten during the write
                self._written[message_id] = len(text)
        if self._on_stop_requested is not None:
            for message_id, reason in stops:
                self._on_stop_requested(message_id, reason)
