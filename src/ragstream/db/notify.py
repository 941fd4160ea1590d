"""Events between server processes on one database: PostgreSQL LISTEN/NOTIFY.

`PgBroker` is the event broker of a server process (`domain/events.py`). Each process keeps one
dedicated connection (outside the pool): it LISTENs on a topic while a subscriber of that
process follows it, and sends every published event as a NOTIFY on the topic's channel. An
event reaches the subscribers of its own process at once, in memory, and those of the other
processes through the database (each process ignores its own notifications).

Notifications are sent in batches by one task, in the order they were published, so the
subscribers of a topic see its events in that order. A lost connection is reopened (and its
topics listened to again) with backoff; events published meanwhile wait in a bounded outbox,
and a subscriber that must not miss one re-reads the state (the chat followers and
`documentEvents` do). A NOTIFY payload is at most 8000 bytes: larger events are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from types import TracebackType
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from ragstream.domain.events import InMemoryBroker, Outbox, Payload

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 7_999  # PostgreSQL's limit is 8000, terminator included
MAX_OUTBOX = 10_000  # events kept while the connection is away; then the oldest are dropped
SEND_PACE = 0.01  # seconds between two batches of notifications at least (events.Outbox)
NOTIFY_MANY = "SELECT pg_notify(c, p) FROM unnest($1::text[], $2::text[]) AS t(c, p)"


def asyncpg_dsn(url: str) -> str:
    """The libpq form of a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgBroker:
    """Publish/subscribe across the processes of one database (see the module docstring)."""

    retains_history = False

    def __init__(self, dsn: str, *, connect_timeout: float = 5.0, max_pending: int = 1_000) -> None:
        self.origin = uuid.uuid4().hex
        self._dsn = dsn
        self._timeout = connect_timeout
        self._local = InMemoryBroker(max_pending)
        self._listening: dict[str, int] = {}  # topic -> subscribers in this process
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()  # one operation at a time on the connection
        self._outbox: Outbox[tuple[str, str]] = Outbox(MAX_OUTBOX, pace=SEND_PACE)
        self._sender: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        async with self._lock:
            await self._live()
        self._sender = asyncio.create_task(
            self._outbox.send_forever(
                self._send,
                (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError),
                retry=self._drop_connection,
            ),
            name="events-notify",
        )

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        for chore in list(self._chores):
            chore.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a connection that already broke
                await self._conn.close(timeout=self._timeout)
            self._conn = None
        await self._local.close()

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: Payload) -> None:
        data = json.dumps({"o": self.origin, "d": payload}, separators=(",", ":"))
        if len(data.encode()) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"an event on {topic} is larger than a notification can carry")
        self._local.deliver(topic, payload)
        self._outbox.put((topic, data))

    async def _send(self, batch: list[tuple[str, str]]) -> None:
        async with self._lock:
            conn = await self._live()  # also after a lost connection, with nothing to send
            if batch:
                # One statement, so one round trip and one transaction whatever the batch's
                # size (executemany binds each row: several times the CPU for a few rows);
                # unnest yields the rows in array order, so they are delivered in this order.
                channels, payloads = zip(*batch, strict=True)
                await conn.execute(NOTIFY_MANY, list(channels), list(payloads))

    # --- subscribing -------------------------------------------------------------------------

    async def retire(self, topic: str) -> None:
        """Notifications keep no history."""

    def subscribe(self, topic: str, *, replay: bool = False) -> _PgStream:
        return _PgStream(self, topic)

    def subscriber_count(self, topic: str) -> int:
        return self._local.subscriber_count(topic)

    async def listening(self) -> set[str]:
        """The channels the database has this process listening to."""
        async with self._lock:
            conn = await self._live()
            return {row[0] for row in await conn.fetch("SELECT pg_listening_channels()")}

    async def _listen(self, topic: str) -> None:
        count = self._listening.get(topic, 0)
        self._listening[topic] = count + 1
        if count:
            return
        try:
            async with self._lock:
                conn = await self._live()
                await conn.add_listener(topic, self._received)
        except BaseException:
            self._unlisten(topic)
            raise

    def _unlisten(self, topic: str) -> None:
        """Synchronous, so a subscriber leaving on cancellation never leaks its count."""
        count = self._listening.get(topic, 0) - 1
        if count > 0:
            self._listening[topic] = count
            return
        self._listening.pop(topic, None)
        chore = asyncio.create_task(self._stop_listening(topic), name="events-unlisten")
        self._chores.add(chore)
        chore.add_done_callback(self._chores.discard)

    async def _stop_listening(self, topic: str) -> None:
        async with self._lock:
            conn = self._conn
            if topic in self._listening or conn is None or conn.is_closed():
                return
            try:
                await conn.remove_listener(topic, self._received)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._drop_connection()  # reopened without the topic

    def _received(
        self, conn: asyncpg.Connection[Any], pid: int, channel: str, payload: str
    ) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return  # not one of ragstream's
        if message.get("o") != self.origin:
            self._local.deliver(channel, message["d"])

    # --- the connection ----------------------------------------------------------------------

    async def _live(self) -> asyncpg.Connection[Any]:
        """The connection, reopened (listening to every current topic) if it was lost.
        Called with the lock held."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn,
            timeout=self._timeout,
            server_settings={"application_name": "ragstream-events"},
        )
        try:
            # A copy: subscribers come and go while this waits (their own calls then wait for
            # the lock, and find this connection).
            for topic in list(self._listening):
                await conn.add_listener(topic, self._received)
        except BaseException:
            await conn.close()
            raise
        conn.add_termination_listener(self._lost)
        self._conn = conn
        return conn

    def _lost(self, conn: asyncpg.Connection[Any]) -> None:
        if conn is self._conn:
            logger.warning("lost the event connection to the database; reconnecting")
            self._conn = None
            self._outbox.wake()  # the sender reconnects

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()


class _PgStream:
    """One subscription: the topic's events from this process and, through the database,
    from the others."""

    def __init__(self, broker: PgBroker, topic: str) -> None:
        self._broker = broker
        self._topic = topic
        self._memory = broker._local.subscribe(topic)

    async def __aenter__(self) -> _PgStream:
        await self._memory.__aenter__()
        try:
            await self._broker._listen(self._topic)
        except BaseException:
            await self._memory.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._memory.__aexit__(exc_type, exc, tb)
        self._broker._unlisten(self._topic)

    def __aiter__(self) -> _PgStream:
        return self

    async def __anext__(self) -> Payload:
        return await self._memory.__anext__()

    async def next_within(self, quiet: float) -> Payload | None:
        return await self._memory.next_within(quiet)
