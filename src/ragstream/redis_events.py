"""Events between server processes and replicas through Redis (`RAGSTREAM_REDIS_URL`).

`RedisBroker` is the event broker of a server process (`domain/events.py`), like `PgBroker`,
for replicas on many machines. Every topic has a Redis Stream (``ragstream:<topic>``), its
history: capped with ``MAXLEN ~``, expiring an hour after its last event. What a process
publishes in one batch is added to those streams by one script, which also sends the batch,
with each entry's id, as one Pub/Sub message on ``ragstream:events``. Every process listens
on that channel and hands each entry to the subscriptions it has for the entry's topic, so
following many answers costs a process one message per batch of another process, whatever
the number of topics it follows (the other processes' own entries it skips: their
subscribers got them in memory).

The streams are what Pub/Sub cannot give: ``subscribe(topic, replay=True)`` reads the topic's
stream from its first entry, then the live entries after those, by id, with no gap and no
duplicate (a follower of an answer gets every delta published since the answer started,
`remote.py`); and a listener that lost its connection reads, once back, what it missed from
the streams of the topics it follows. `retire` trims a topic's stream to its last entry and
lets it expire soon after (an answer that ended: its text is in PostgreSQL).

Entries are sent in batches by one task, in the order they were published. Redis away: entries
wait in a bounded outbox and the listener reconnects with backoff; nothing blocks on Redis, and
the chat followers and `documentEvents` re-read PostgreSQL while they hear nothing, so a
subscriber gets the rest of an answer from the database (at its poll interval) until Redis is
back. The script needs a single Redis server (or a primary with its replicas), not a cluster:
one batch names many keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from types import TracebackType
from typing import Any, cast

import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from ragstream.domain.events import CLOSE_DRAIN_SECONDS, InMemoryBroker, Outbox, Payload

logger = logging.getLogger(__name__)

KEY_PREFIX = "ragstream:"
CHANNEL = KEY_PREFIX + "events"  # every batch of every process, as one message
MAX_ENTRIES = 10_000  # per stream (approximately): far above an answer's coalesced deltas
IDLE_EXPIRY_SECONDS = 3_600  # a stream nobody writes to for this long goes
RETIRED_EXPIRY_SECONDS = 60  # a retired stream's last entry stays this long for late readers
MAX_OUTBOX = 10_000  # entries kept while Redis is away; then the oldest are dropped
SEND_PACE = 0.01  # seconds between two batches of entries at least (events.Outbox)
QUIET_SECONDS = 2.0  # a listener that hears nothing this long pings, and gives up after two
RETIRE = ""  # the script's argument for "trim this stream" (an entry is never empty)

# KEYS: one stream key per entry. ARGV: origin, max entries, idle expiry, retired expiry,
# channel, then one payload (JSON) per key, or "" to trim that stream to its last entry.
# Each stream's expiry is set once, after its last entry of the batch (a retired stream's
# after its trim); the message names each added entry's key and id.
PUBLISH_SCRIPT = """
local origin = ARGV[1]
local sent, expiry, order = {}, {}, {}
for i, key in ipairs(KEYS) do
  local payload = ARGV[i + 5]
  if payload == '' then
    redis.call('XTRIM', key, 'MAXLEN', 1)
    if expiry[key] == nil then order[#order + 1] = key end
    expiry[key] = ARGV[4]
  else
    local id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[2], '*',
      'e', '{"o":"' .. origin .. '","d":' .. payload .. '}')
    if expiry[key] == nil then order[#order + 1] = key; expiry[key] = ARGV[3] end
    sent[#sent + 1] = '[' .. cjson.encode(key) .. ',"' .. id .. '",' .. payload .. ']'
  end
end
for _, key in ipairs(order) do redis.call('EXPIRE', key, expiry[key]) end
if #sent > 0 then
  redis.call('PUBLISH', ARGV[5], '{"o":"' .. origin .. '","e":[' .. table.concat(sent, ',') .. ']}')
end
return #sent
"""


EntryId = tuple[int, int]  # a Redis Stream entry's id, "<ms>-<seq>", as numbers that compare


def stream_key(topic: str) -> str:
    return KEY_PREFIX + topic


def entry_id(raw: str) -> EntryId:
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq)


class RedisBroker:
    """Publish/subscribe across processes and machines (see the module docstring)."""

    retains_history = True

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = 5.0,
        max_pending: int = 1_000,
        listen: bool = True,
    ) -> None:
        """``listen=False``: a broker that only publishes (a process with no subscribers, such
        as `ragstream worker`): no listener subscribes to the channel, so every other process's
        batches are neither sent to it nor decoded."""
        self.origin = uuid.uuid4().hex
        self._listens = listen
        self._timeout = connect_timeout
        self._client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=connect_timeout,
            decode_responses=True,
        )
        self._script = self._client.register_script(PUBLISH_SCRIPT)
        # The listener reconnects itself (and then reads what it missed from the streams):
        # its client must not do so silently.
        self._listen_client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=connect_timeout,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        self._local = InMemoryBroker(max_pending)
        # (topic, payload as JSON, or RETIRE)
        self._outbox: Outbox[tuple[str, str]] = Outbox(MAX_OUTBOX, pace=SEND_PACE)
        self._sender: asyncio.Task[None] | None = None
        # Stream key -> its subscriptions here, each with the id of the last entry it had
        # (None: it follows what comes next and has had nothing yet).
        self._reading: dict[str, dict[_RedisStream, EntryId | None]] = {}
        # Subscriptions reading their stream's history: what the listener hears for them
        # meanwhile waits here, then goes after the history (by id, without duplicates).
        self._joining: dict[_RedisStream, list[tuple[EntryId, Payload]]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._connections = 0  # the listener's connections so far
        self._own = f'{{"o":"{self.origin}"'  # how this process's own batches start

    async def start(self) -> None:
        if self._listens:
            self._listener = asyncio.create_task(self._listen_forever(), name="events-redis-listen")
        self._sender = asyncio.create_task(
            self._outbox.send_forever(self._send, (RedisError, OSError)), name="events-redis"
        )
        try:
            async with asyncio.timeout(self._timeout):
                if self._listens:
                    await self._listening.wait()
                else:
                    await self._client.ping()
        except (TimeoutError, RedisError, OSError):
            # Not fatal: answers are generated and stored without Redis; events wait for it.
            logger.warning("Redis is not reachable yet; events will wait for it")

    async def close(self) -> None:
        if self._sender is not None and not self._sender.done():
            # What was published last (a document's final status, an answer's end) still goes.
            await self._outbox.drain(CLOSE_DRAIN_SECONDS)
        for task in (self._sender, self._listener):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        joins = [
            joiner
            for subscriptions in self._reading.values()
            for subscription in subscriptions
            if (joiner := subscription._stop_joining()) is not None
        ]
        await asyncio.gather(*joins, return_exceptions=True)
        await self._client.aclose()
        await self._listen_client.aclose()
        await self._local.close()

    # --- publishing --------------------------------------------------------------------------

    async def publish(self, topic: str, payload: Payload) -> None:
        self._local.deliver(topic, payload)
        self._outbox.put((topic, orjson.dumps(payload).decode()))

    async def retire(self, topic: str) -> None:
        """The topic's stream is done (after what was published before): trimmed to its last
        entry, which expires after `RETIRED_EXPIRY_SECONDS`."""
        self._outbox.put((topic, RETIRE))

    async def _send(self, batch: list[tuple[str, str]]) -> None:
        """One script call for the whole batch (a batch that fails is sent again whole, so it
        is not split into calls that could land in part)."""
        if not batch:
            return
        await self._script(
            keys=[stream_key(topic) for topic, _ in batch],
            args=[
                self.origin,
                MAX_ENTRIES,
                IDLE_EXPIRY_SECONDS,
                RETIRED_EXPIRY_SECONDS,
                CHANNEL,
                *(payload for _, payload in batch),
            ],
        )

    # --- subscribing -------------------------------------------------------------------------

    def subscribe(self, topic: str, *, replay: bool = False) -> _RedisStream:
        if not self._listens:
            raise RuntimeError("this broker only publishes: it cannot be subscribed to")
        return _RedisStream(self, topic, replay)

    def subscriber_count(self, topic: str) -> int:
        return self._local.subscriber_count(topic)

    def _leave(self, subscription: _RedisStream, key: str) -> None:
        self._joining.pop(subscription, None)
        subscriptions = self._reading.get(key)
        if subscriptions is not None:
            subscriptions.pop(subscription, None)
            if not subscriptions:
                del self._reading[key]

    async def _last_id(self, key: str) -> EntryId | None:
        """The id of the stream's last entry ((0, 0) for none yet); None when Redis is away."""
        try:
            last = await self._client.xrevrange(key, count=1)
        except (RedisError, OSError):
            return None
        return entry_id(str(last[0][0])) if last else (0, 0)

    async def _history(self, key: str, after: EntryId) -> list[tuple[EntryId, Payload | None]]:
        """The stream's entries after ``after``, oldest first (None: not one of ragstream's
        or this process's own)."""
        start = "({}-{}".format(*after) if after > (0, 0) else "-"
        entries = cast("list[tuple[str, dict[str, str]]]", await self._client.xrange(key, start))
        return [(entry_id(raw), self._payload(fields.get("e"))) for raw, fields in entries]

    def _payload(self, entry: str | None) -> Payload | None:
        try:
            message = orjson.loads(entry) if entry is not None else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(message, dict) or message.get("o") == self.origin:
            return None
        payload = message.get("d")
        return payload if isinstance(payload, dict) else None

    async def _join(self, subscription: _RedisStream, key: str) -> None:
        """A replaying subscription: its stream's history, then what the listener heard for
        it meanwhile. Retried until Redis answers (the subscription waits, nothing blocks)."""
        backoff = 0.1
        after: EntryId = (0, 0)
        while True:
            await self._listening.wait()  # what comes after the history reaches the listener
            connection = self._connections
            try:
                history = await self._history(key, after)
            except (RedisError, OSError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            for at, payload in history:
                if at > after:
                    after = at
                    if payload is not None:
                        subscription._memory._deliver(payload)
            if connection != self._connections or not self._listening.is_set():
                # The listener lost its connection meanwhile: what it heard may lie past what
                # it missed, and the stream has both; read on from there.
                self._joining[subscription] = []
                continue
            for at, payload in self._joining.pop(subscription):
                if at > after:
                    after = at
                    subscription._memory._deliver(payload)
            break
        # Even (0, 0): after a reconnection the listener reads the stream from its start.
        self._reading[key][subscription] = after

    async def _listen_forever(self) -> None:
        """Listens on the channel; after each (re)connection, first reads from the streams what
        the subscriptions here missed while the listener was away."""
        backoff = 0.1
        while True:
            pubsub: Any = self._listen_client.pubsub()
            try:
                async with asyncio.timeout(self._timeout):
                    await pubsub.subscribe(CHANNEL)
                    while (await pubsub.get_message(timeout=self._timeout)) is None:
                        pass  # the subscription's confirmation
                await self._catch_up()
                self._connections += 1
                self._listening.set()
                backoff = 0.1
                await self._hear(pubsub)
            except Exception:  # Redis away, or anything else: never stop listening
                self._listening.clear()
                logger.warning("lost the events channel of Redis; reconnecting", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._listening.clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _catch_up(self) -> None:
        """Entries the subscriptions here missed (each after the last one it had), in order."""
        for key, subscriptions in list(self._reading.items()):
            known = [
                after
                for subscription, after in subscriptions.items()
                if after is not None and subscription not in self._joining
            ]
            if not known:
                continue
            for at, payload in await self._history(key, min(known)):
                self._hand_over(key, at, payload)

    async def _hear(self, pubsub: Any) -> None:
        """Batches from the channel until the connection fails (a silent one is pinged).

        Read from the subscribed connection itself: the client's message reading (retries,
        health checks, a dict per message) cost more than the batch it carried, and this
        listener reconnects on its own anyway."""
        connection = pubsub.connection
        pinged = False
        while True:
            reply = await connection.read_response(
                timeout=QUIET_SECONDS, disconnect_on_error=False, push_request=True
            )
            if reply is None:
                if pinged:
                    raise TimeoutError("Redis did not answer a ping on the events channel")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            # ["message", channel, data]; the answers to pings and (un)subscriptions are not.
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == "message":
                self._on_batch(reply[2])

    def _on_batch(self, data: str) -> None:
        if data.startswith(self._own):
            return  # this process's subscribers had these in memory
        try:
            for key, raw, payload in orjson.loads(data)["e"]:
                if key in self._reading:
                    self._hand_over(
                        key, entry_id(raw), payload if isinstance(payload, dict) else None
                    )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return  # not one of ragstream's

    def _hand_over(self, key: str, at: EntryId, payload: Payload | None) -> None:
        """An entry to each subscription of ``key`` that has not had it (one still reading its
        history keeps it for later)."""
        subscriptions = self._reading.get(key)
        if not subscriptions:
            return
        for subscription, after in subscriptions.items():
            held = self._joining.get(subscription)
            if held is not None:
                if payload is not None:
                    held.append((at, payload))
            elif after is None or at > after:
                subscriptions[subscription] = at
                if payload is not None:
                    subscription._memory._deliver(payload)


class _RedisStream:
    """One subscription: the topic's events from this process (in memory) and, through the
    process's listener (and the topic's stream, when replaying), from the others."""

    def __init__(self, broker: RedisBroker, topic: str, replay: bool) -> None:
        self._broker = broker
        self._key = stream_key(topic)
        self._replay = replay
        self._memory = broker._local.subscribe(topic)
        self._joiner: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _RedisStream:
        await self._memory.__aenter__()
        broker = self._broker
        broker._reading.setdefault(self._key, {})[self] = None
        if self._replay:
            broker._joining[self] = []
            self._joiner = asyncio.create_task(
                broker._join(self, self._key), name="events-redis-join"
            )
        else:
            # Live entries reach it from now on; the stream's last entry is where a catch-up
            # after a lost connection starts (None while Redis is away: from what comes next).
            last = await broker._last_id(self._key)
            reading = broker._reading.get(self._key, {})
            had = reading.get(self)
            if self in reading and last is not None and (had is None or last > had):
                reading[self] = last
        return self

    def _stop_joining(self) -> asyncio.Task[None] | None:
        """Cancels the join still reading the history, if any; returns its task."""
        joiner, self._joiner = self._joiner, None
        if joiner is not None:
            joiner.cancel()
        return joiner

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_joining()
        self._broker._leave(self, self._key)
        await self._memory.__aexit__(exc_type, exc, tb)

    def __aiter__(self) -> _RedisStream:
        return self

    async def __anext__(self) -> Payload:
        return await self._memory.__anext__()

    async def next_within(self, quiet: float) -> Payload | None:
        return await self._memory.next_within(quiet)
