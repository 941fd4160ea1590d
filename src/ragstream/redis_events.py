"""Events between server processes and replicas through Redis Streams (`RAGSTREAM_REDIS_URL`).

`RedisBroker` is the event broker of a server process (`domain/events.py`), like `PgBroker`,
for replicas on many machines. Every topic is one Redis Stream (``ragstream:<topic>``):
publishing is an ``XADD`` (capped with ``MAXLEN ~``, and expiring an hour after its last
event). One task per process reads every stream its subscriptions follow with a single
``XREAD BLOCK``, each from where its subscriptions are, so following many answers costs one
read per batch of entries rather than one per subscription and entry (and at most one read
per `READ_PACE`, so that what another process sent together is read together); a new
subscription ends the current read by adding an entry to the process's own wake-up stream, and
is read at once.
An event reaches the subscribers of its own process at once, in memory, and those of the other
processes through Redis (each process skips its own entries).

The broker keeps history: ``subscribe(topic, replay=True)`` reads the stream from its first
entry, so a follower of an answer gets every delta the generating process added since the
answer started (`remote.py`), and `retire` trims a topic's stream to its last entry and lets it
expire soon after (an answer that ended: its text is in PostgreSQL).

Entries are sent in batches by one task, in the order they were published. Redis away: entries
wait in a bounded outbox and the reader retries with backoff; nothing blocks on Redis, and the chat
followers and `documentEvents` re-read PostgreSQL while they hear nothing, so a subscriber gets
the rest of an answer from the database (at its poll interval) until Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from types import TracebackType
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError

from ragstream.domain.events import InMemoryBroker, Outbox, Payload

logger = logging.getLogger(__name__)

KEY_PREFIX = "ragstream:"
MAX_ENTRIES = 10_000  # per stream (approximately): far above an answer's coalesced deltas
IDLE_EXPIRY_SECONDS = 3_600  # a stream nobody writes to for this long goes
RETIRED_EXPIRY_SECONDS = 60  # a retired stream's last entry stays this long for late readers
MAX_OUTBOX = 10_000  # entries kept while Redis is away; then the oldest are dropped
SEND_PACE = 0.01  # seconds between two pipelines of entries at least (events.Outbox)
# Seconds between the starts of two reads at least: the entries of another process's pipeline
# then come in one read rather than one each (a read names every stream followed here, and
# preparing its command is most of what following costs this process).
READ_PACE = 0.01
BLOCK_MS = 2_000  # one XREAD waits at most this long, so a reader notices a closed broker


EntryId = tuple[int, int]  # a Redis Stream entry's id, "<ms>-<seq>", as numbers that compare


def stream_key(topic: str) -> str:
    return KEY_PREFIX + topic


def entry_id(raw: str) -> EntryId:
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq)


class RedisBroker:
    """Publish/subscribe across processes and machines (see the module docstring)."""

    retains_history = True

    def __init__(self, url: str, *, connect_timeout: float = 5.0, max_pending: int = 1_000) -> None:
        self.origin = uuid.uuid4().hex
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            # Above BLOCK_MS: a blocking read that never answers fails instead of hanging.
            socket_timeout=BLOCK_MS / 1000 + connect_timeout,
            decode_responses=True,
        )
        self._local = InMemoryBroker(max_pending)
        # (topic, entry); None: retire the topic
        self._outbox: Outbox[tuple[str, str | None]] = Outbox(MAX_OUTBOX, pace=SEND_PACE)
        self._sender: asyncio.Task[None] | None = None
        # Stream key -> its subscriptions here, each with the last entry it had (None: from
        # what comes next), all read by one task.
        self._reading: dict[str, dict[_RedisStream, EntryId | None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._wake_key = f"{KEY_PREFIX}wake:{self.origin}"

    async def start(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError):
            # Not fatal: answers are generated and stored without Redis; events wait for it.
            logger.warning("Redis is not reachable yet; events will wait for it", exc_info=True)
        self._sender = asyncio.create_task(
            self._outbox.send_forever(self._send, (RedisError, OSError)), name="events-redis"
        )

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        if self._reader is not None:
            self._reader.cancel()
            # The client can absorb a cancellation while it reconnects: then the reader stops
            # after its current read (at most BLOCK_MS), and nobody waits for it.
            await asyncio.wait([self._reader], timeout=1.0)
        await self._client.aclose()
        await self._local.close()

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: Payload) -> None:
        self._local.deliver(topic, payload)
        self._outbox.put(
            (topic, json.dumps({"o": self.origin, "d": payload}, separators=(",", ":")))
        )

    async def retire(self, topic: str) -> None:
        """The topic's stream is done (after what was published before): trimmed to its last
        entry, which expires after `RETIRED_EXPIRY_SECONDS`."""
        self._outbox.put((topic, None))

    async def _send(self, batch: list[tuple[str, str | None]]) -> None:
        if not batch:
            return
        # One round trip; commands run in this order. A stream's expiry is set once per
        # batch, after its last entry in it (a retired stream's, after its trim).
        expiries: dict[str, int] = {}
        async with self._client.pipeline(transaction=False) as pipe:
            for topic, entry in batch:
                key = stream_key(topic)
                if entry is None:
                    pipe.xtrim(key, maxlen=1, approximate=False)
                    expiries[key] = RETIRED_EXPIRY_SECONDS
                else:
                    pipe.xadd(key, {"e": entry}, maxlen=MAX_ENTRIES, approximate=True)
                    expiries.setdefault(key, IDLE_EXPIRY_SECONDS)
            for key, seconds in expiries.items():
                pipe.expire(key, seconds)
            await pipe.execute()

    # --- subscribing -------------------------------------------------------------------------

    def subscribe(self, topic: str, *, replay: bool = False) -> _RedisStream:
        return _RedisStream(self, topic, replay)

    def subscriber_count(self, topic: str) -> int:
        return self._local.subscriber_count(topic)

    async def _start_id(self, key: str) -> EntryId | None:
        """The id of the stream's last entry: a subscription reads what comes after it."""
        try:
            last = await self._client.xrevrange(key, count=1)
        except (RedisError, OSError):
            return None  # Redis away: from the first entry the reader sees once it is back
        return entry_id(str(last[0][0])) if last else (0, 0)

    async def _join(self, subscription: _RedisStream, key: str, after: EntryId | None) -> None:
        """Adds a subscription to the process's reader, which reads it at once: a blocked read
        is ended by an entry on this process's wake-up stream."""
        self._reading.setdefault(key, {})[subscription] = after
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read_forever(), name="events-redis-read")
        self._joined.set()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
                pipe.expire(self._wake_key, IDLE_EXPIRY_SECONDS)
                await pipe.execute()
        except (RedisError, OSError):
            pass  # the reader is retrying meanwhile, and reads every key again when back

    def _leave(self, subscription: _RedisStream, key: str) -> None:
        subscriptions = self._reading.get(key)
        if subscriptions is not None:
            subscriptions.pop(subscription, None)
            if not subscriptions:
                del self._reading[key]

    async def _read_forever(self) -> None:
        """One XREAD for every stream this process follows, each from the oldest position
        its subscriptions reached; an entry goes to the subscriptions that have not had it.
        The entries of this process are skipped (its subscribers got them in memory)."""
        backoff = 0.1
        wake_after = "0-0"
        loop = asyncio.get_running_loop()
        last_read = -READ_PACE
        while True:
            if not self._reading:
                self._joined.clear()
                await self._joined.wait()
                continue
            wait = last_read + READ_PACE - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last_read = loop.time()
            self._joined.clear()
            streams: dict[str, str] = {self._wake_key: wake_after}
            for key, subscriptions in self._reading.items():
                known = [after for after in subscriptions.values() if after is not None]
                streams[key] = "{}-{}".format(*min(known)) if known else "$"
            try:
                response = cast(
                    "list[tuple[str, list[tuple[str, dict[str, str]]]]]",
                    await self._client.xread(streams, block=BLOCK_MS, count=500),  # type: ignore[arg-type]
                )
            except (RedisError, OSError):
                logger.warning("could not read events from Redis; retrying", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            for key, entries in response:
                if key == self._wake_key:
                    wake_after = entries[-1][0]
                    continue
                for raw_id, fields in entries:
                    self._deliver(key, entry_id(raw_id), fields)

    def _deliver(self, key: str, at: EntryId, fields: dict[str, str]) -> None:
        subscriptions = self._reading.get(key, {})
        waiting = [s for s, after in subscriptions.items() if after is None or at > after]
        for subscription in waiting:
            subscriptions[subscription] = at
        if not waiting:
            return
        try:
            message = json.loads(fields["e"])
        except (KeyError, ValueError):
            return  # not one of ragstream's
        payload = message.get("d") if isinstance(message, dict) else None
        if isinstance(payload, dict) and message.get("o") != self.origin:
            for subscription in waiting:
                subscription._memory._deliver(payload)


class _RedisStream:
    """One subscription: the topic's events from this process (in memory) and, through its
    Redis Stream read by the process's reader, from the others."""

    def __init__(self, broker: RedisBroker, topic: str, replay: bool) -> None:
        self._broker = broker
        self._key = stream_key(topic)
        self._replay = replay
        self._memory = broker._local.subscribe(topic)

    async def __aenter__(self) -> _RedisStream:
        await self._memory.__aenter__()
        after = (0, 0) if self._replay else await self._broker._start_id(self._key)
        await self._broker._join(self, self._key, after)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._broker._leave(self, self._key)
        await self._memory.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> _RedisStream:
        return self

    async def __anext__(self) -> Payload:
        return await self._memory.__anext__()

    async def next_within(self, quiet: float) -> Payload | None:
        return await self._memory.next_within(quiet)
