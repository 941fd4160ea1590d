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
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

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

    async def next_within(self, quiet: float) -> Payload | None:
        """The next event, or None once ``quiet`` seconds of waiting passed without one."""
        ...


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
    """One subscriber's events, in order, read by one task.

    A subscriber that stopped reading must not grow memory without bound: past ``max_pending``
    events it loses the oldest, and can re-read state from the database.
    """

    def __init__(self, broker: InMemoryBroker, topic: str, max_pending: int) -> None:
        self._broker = broker
        self._topic = topic
        self._pending: deque[Payload] = deque(maxlen=max_pending)
        self._waiter: asyncio.Future[None] | None = None
        # `next_within`: when the current wait gives up, and the timer that checks it.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _deliver(self, payload: Payload) -> None:
        self._pending.append(payload)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def __aenter__(self) -> _MemoryStream:
        self._broker._streams.setdefault(self._topic, set()).add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        streams = self._broker._streams.get(self._topic)
        if streams is not None:
            streams.discard(self)
            if not streams:
                del self._broker._streams[self._topic]

    def __aiter__(self) -> _MemoryStream:
        return self

    async def __anext__(self) -> Payload:
        while not self._pending:
            await self._wait()
        return self._pending.popleft()

    async def next_within(self, quiet: float) -> Payload | None:
        """The next event, or None once ``quiet`` seconds of waiting passed without one.

        The timer behind the wait is armed at most about once per ``quiet`` seconds, not at
        every wait: a follower woken by an event every few milliseconds costs no timer each.
        """
        if self._pending:
            return self._pending.popleft()
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + quiet
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check_quiet, self._deadline)
        await self._wait()
        return self._pending.popleft() if self._pending else None

    def _check_quiet(self, deadline: float) -> None:
        """The timer of `next_within`: ends a wait that started before ``deadline``'s, else
        checks again at the current wait's deadline."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # not waiting: the next wait arms a timer
        if self._deadline <= deadline:
            waiter.set_result(None)  # nothing came: the caller gets None
        else:
            self._timer = waiter.get_loop().call_at(
                self._deadline, self._check_quiet, self._deadline
            )

    async def _wait(self) -> None:
        """Until an event is delivered (or the quiet timer ends the wait)."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


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


Entry = TypeVar("Entry")
logger = logging.getLogger(__name__)


# How long closing a broker waits for its outbox to be sent (a broker that is away is left).
CLOSE_DRAIN_SECONDS = 1.0


class Outbox(Generic[Entry]):
    """What a process has yet to send to the others, in order, sent in batches by one task.

    A batch that fails goes back to the front and is retried after a pause that grows up to 5 s;
    past ``limit`` entries the oldest are dropped, so a broker that is away costs bounded memory.

    Sends are at least ``pace`` seconds apart: what is published meanwhile goes in the next
    batch, so a process streaming many answers pays one round trip per ``pace`` for all of
    them rather than one per delta (an event waits at most ``pace`` for it).
    """

    def __init__(self, limit: int, *, pace: float = 0.0) -> None:
        self.limit = limit
        self.pace = pace
        self._entries: list[Entry] = []
        self._wake = asyncio.Event()
        self._sent = asyncio.Event()  # everything put so far has been sent
        self._sent.set()

    def put(self, entry: Entry) -> None:
        self._entries.append(entry)
        if len(self._entries) > self.limit:
            del self._entries[0]
        self._sent.clear()
        self._wake.set()

    async def drain(self, within: float) -> bool:
        """Waits until everything put so far has been sent, at most ``within`` seconds (a
        broker that is away keeps it); whether it was."""
        try:
            async with asyncio.timeout(within):
                await self._sent.wait()
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        """Runs the sender once more even with nothing to send (e.g. to reconnect)."""
        self._wake.set()

    async def send_forever(
        self,
        send: Callable[[list[Entry]], Awaitable[None]],
        failures: tuple[type[BaseException], ...],
        *,
        retry: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Calls ``send`` with each batch (possibly empty, after `wake`) until cancelled;
        ``retry`` runs after a failed batch, before the pause."""
        backoff = 0.1
        loop = asyncio.get_running_loop()
        last_send = -self.pace
        while True:
            await self._wake.wait()
            wait = last_send + self.pace - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._wake.clear()
            last_send = loop.time()
            batch, self._entries = self._entries, []
            try:
                await send(batch)
            except failures:
                logger.warning("could not send events to other processes; retrying", exc_info=True)
                self._entries[:0] = batch
                del self._entries[: max(0, len(self._entries) - self.limit)]
                if retry is not None:
                    await retry()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                self._wake.set()
            else:
                backoff = 0.1
                if not self._entries:
                    self._sent.set()
