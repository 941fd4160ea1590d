"""Publish/subscribe of small JSON-shaped events between the parts of ragstream.

Topics are plain strings (``document:<id>``, ``message:<id>``...). The in-memory broker serves one
process; `db/notify.py: PgBroker` (PostgreSQL LISTEN/NOTIFY) serves every process on one
database, and `redis_events.py: RedisBroker` (Redis Streams) replicas on many machines, behind
the same interface (payloads are JSON-compatible dicts for that reason). Only the Redis broker
keeps history (`retains_history`): there ``subscribe(topic, replay=True)`` starts at the topic's
first event, elsewhere ``replay`` changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Protocol

Payload = dict[str, Any]


class EventStream(Protocol):
    """One subscription: an async iterator of payloads, closed by leaving its ``async with``."""

    async def __aenter__(self) -> EventStream: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def __aiter__(self) -> AsyncIterator[Payload]: ...

    async def __anext__(self) -> Payload: ...


class EventBroker(Protocol):
    @property
    def retains_history(self) -> bool:
        """Whether ``subscribe(topic, replay=True)`` replays the topic's past events."""
        ...

    async def publish(self, topic: str, payload: Payload) -> None:
        """Deliver ``payload`` to every current subscriber of ``topic`` (fire and forget)."""
        ...

    async def retire(self, topic: str) -> None:
        """Nothing more will be published on ``topic``: its history may go."""
        ...

    def subscribe(self, topic: str, *, replay: bool = False) -> EventStream:
        """A stream of the events published on ``topic`` from the moment it is entered (or,
        with ``replay`` on a broker that retains history, from its first event)."""
        ...

    async def close(self) -> None: ...


class _MemoryStream:
    def __init__(self, broker: InMemoryBroker, topic: str, max_pending: int) -> None:
        self._broker = broker
        self._topic = topic
        self._queue: asyncio.Queue[Payload] = asyncio.Queue(max_pending)

    def _deliver(self, payload: Payload) -> None:
        if self._queue.full():
            # A subscriber that stopped reading must not grow memory without bound; it loses
            # the oldest event and can re-read state from the database.
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(payload)

    async def __aenter__(self) -> _MemoryStream:
        self._broker._streams.setdefault(self._topic, set()).add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        streams = self._broker._streams.get(self._topic)
        if streams is not None:
            streams.discard(self)
            if not streams:
                del self._broker._streams[self._topic]

    def __aiter__(self) -> _MemoryStream:
        return self

    async def __anext__(self) -> Payload:
        return await self._queue.get()


class InMemoryBroker:
    """Fan-out inside one process and one event loop."""

    retains_history = False

    def __init__(self, max_pending: int = 1_000) -> None:
        self._streams: dict[str, set[_MemoryStream]] = {}
        self._max_pending = max_pending

    async def publish(self, topic: str, payload: Payload) -> None:
        self.deliver(topic, payload)

    async def retire(self, topic: str) -> None:
        """No history to drop."""

    def deliver(self, topic: str, payload: Payload) -> None:
        """Publishes with no await: subscribers see events in the order they are delivered."""
        for stream in list(self._streams.get(topic, ())):
            stream._deliver(payload)

    def subscribe(self, topic: str, *, replay: bool = False) -> _MemoryStream:
        return _MemoryStream(self, topic, self._max_pending)

    def subscriber_count(self, topic: str) -> int:
        return len(self._streams.get(topic, ()))

    async def close(self) -> None:
        self._streams.clear()
