"""Events between server processes on one database: PostgreSQL LISTEN/NOTIFY.

`PgBroker` is the event broker of a server process (`domain/events.py`). Each process keeps one
dedicated connection (outside the pool), LISTENs on one channel, ``ragstream_events``, and sends
what it publishes there: the events published within one pace (`SEND_PACE`) go out together,
packed into as few notifications as their size allows (each names the topic of each event).
An event reaches the subscribers of its own process at once, in memory, and those of the other
processes through the database: each process reads every notification of the others (it skips
its own) and passes each event to its subscribers of that topic, if any. One notification per
batch rather than one per event and topic keeps the receiving side's cost (a notification
message, a callback and a JSON parse each) off every delta of a streamed answer.

Batches are sent by one task, in the order their events were published, so the subscribers of
a topic see its events in that order. A lost connection is reopened (and the channel listened
to again) with backoff; events published meanwhile wait in a bounded outbox, and a subscriber
that must not miss one re-reads the state (the chat followers and `documentEvents` do). A
NOTIFY payload is at most 8000 bytes: an event that cannot fit in one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from ragstream.domain.events import (
    CLOSE_DRAIN_SECONDS,
    EventStream,
    InMemoryBroker,
    Outbox,
    Payload,
)

logger = logging.getLogger(__name__)

MAX_PAYLOAD_BYTES = 7_999  # PostgreSQL's limit is 8000, terminator included
MAX_OUTBOX = 10_000  # events kept while the connection is away; then the oldest are dropped
SEND_PACE = 0.01  # seconds between two batches of notifications at least (events.Outbox)
CHANNEL = "ragstream_events"
NOTIFY_MANY = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS t(p)"
# What a failed batch raises when the connection must be replaced. InternalClientError: a
# statement on a connection whose end the server has announced but asyncpg has not finished
# reading ("another operation is in progress").
CONNECTION_FAILURES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


def asyncpg_dsn(url: str) -> str:
    """The libpq form of a SQLAlchemy ``postgresql+asyncpg://`` URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgBroker:
    """Publish/subscribe across the processes of one database (see the module docstring)."""

    retains_history = False

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float = 5.0,
        max_pending: int = 1_000,
        listen: bool = True,
    ) -> None:
        """``listen=False``: a broker that only publishes (a process with no subscribers, such
        as `ragstream worker`), whose connection does not LISTEN, so it is not sent, and does
        not decode, every other process's events."""
        self.origin = uuid.uuid4().hex
        self._listens = listen
        # Every notification of this process: this, its events as [topic, payload] pairs
        # separated by commas, then "]}".
        self._head = f'{{"o":"{self.origin}","e":['
        self._head_bytes = self._head.encode()
        self._dsn = dsn
        self._timeout = connect_timeout
        self._local = InMemoryBroker(max_pending)
        self._conn: asyncpg.Connection[Any] | None = None
        self._lock = asyncio.Lock()  # one operation at a time on the connection
        self._outbox: Outbox[bytes] = Outbox(MAX_OUTBOX, pace=SEND_PACE)
        self._sender: asyncio.Task[None] | None = None

    async def start(self) -> None:
        async with self._lock:
            await self._live()
        self._sender = asyncio.create_task(
            self._outbox.send_forever(self._send, CONNECTION_FAILURES, retry=self._drop_connection),
            name="events-notify",
        )

    async def close(self) -> None:
        if self._sender is not None and not self._sender.done():
            # What was published last (a document's final status, an answer's end) still goes.
            await self._outbox.drain(CLOSE_DRAIN_SECONDS)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._conn is not None:
            with contextlib.suppress(Exception):  # closing a connection that already broke
                await self._conn.close(timeout=self._timeout)
            self._conn = None
        await self._local.close()

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: Payload) -> None:
        entry = orjson.dumps([topic, payload])  # UTF-8: its length is its size in bytes
        if len(self._head_bytes) + len(entry) + 2 > MAX_PAYLOAD_BYTES:
            raise ValueError(f"an event on {topic} is larger than a notification can carry")
        self._local.deliver(topic, payload)
        self._outbox.put(entry)

    def _notifications(self, entries: list[bytes]) -> list[str]:
        """The entries, in order, in as few notification payloads as can carry them."""
        head = self._head_bytes
        payloads: list[str] = []
        packed: list[bytes] = []
        size = len(head) + 2
        for entry in entries:
            if packed and size + len(entry) + 1 > MAX_PAYLOAD_BYTES:
                payloads.append((head + b",".join(packed) + b"]}").decode())
                packed, size = [], len(head) + 2
            packed.append(entry)
            size += len(entry) + 1
        if packed:
            payloads.append((head + b",".join(packed) + b"]}").decode())
        return payloads

    async def _send(self, batch: list[bytes]) -> None:
        async with self._lock:
            conn = await self._live()  # also after a lost connection, with nothing to send
            if batch:
                # One statement, so one round trip and one transaction whatever the batch's
                # size; unnest yields the payloads in array order, delivered in that order.
                await conn.execute(NOTIFY_MANY, CHANNEL, self._notifications(batch))

    # --- subscribing -------------------------------------------------------------------------

    async def retire(self, topic: str) -> None:
        """Notifications keep no history."""

    def subscribe(self, topic: str, *, replay: bool = False) -> EventStream:
        if not self._listens:
            raise RuntimeError("this broker only publishes: it cannot be subscribed to")
        return self._local.subscribe(topic)

    def subscriber_count(self, topic: str) -> int:
        return self._local.subscriber_count(topic)

    def _received(
        self, conn: asyncpg.Connection[Any], pid: int, channel: str, payload: str
    ) -> None:
        if payload.startswith(self._head):
            return  # this process's own: its subscribers had them in memory
        try:
            for topic, event in orjson.loads(payload)["e"]:
                self._local.deliver(topic, event)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not one of ragstream's

    # --- the connection ----------------------------------------------------------------------

    async def _live(self) -> asyncpg.Connection[Any]:
        """The connection, reopened (and listening) if it was lost. Called with the lock held."""
        if self._conn is not None and not self._conn.is_closed():
            return self._conn
        conn: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn,
            timeout=self._timeout,
            server_settings={"application_name": "ragstream-events"},
        )
        if self._listens:
            try:
                await conn.add_listener(CHANNEL, self._received)
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
