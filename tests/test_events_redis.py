"""Events between processes through Redis (`redis_events.py: RedisBroker`).

Two brokers on one real `redis-server` stand for two server processes on two machines.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ragstream.domain.events import EventStream, Payload
from ragstream.redis_events import CHANNEL, RETIRED_EXPIRY_SECONDS, RedisBroker, stream_key
from tests.chat_support import WITHIN, eventually
from tests.redis_support import RedisServer, redis_server


@contextlib.asynccontextmanager
async def two_brokers(
    tmp_path: Path,
) -> AsyncIterator[tuple[RedisServer, RedisBroker, RedisBroker]]:
    async with redis_server(tmp_path / "redis") as redis:
        a, b = RedisBroker(redis.url), RedisBroker(redis.url)
        await a.start()
        await b.start()
        try:
            yield redis, a, b
        finally:
            await a.close()
            await b.close()


async def _next(events: EventStream) -> Payload:
    async with asyncio.timeout(WITHIN):
        return await anext(events)


async def test_a_document_event_reaches_subscribers_in_both_processes_once(
    tmp_path: Path,
) -> None:
    async with (
        two_brokers(tmp_path) as (_, a, b),
        a.subscribe("document:1") as here,
        b.subscribe("document:1") as there,
    ):
        for n in range(300):
            await a.publish("document:1", {"n": n})

        assert [(await _next(there))["n"] for _ in range(300)] == list(range(300))
        assert [(await _next(here))["n"] for _ in range(300)] == list(range(300))
        # A skips its own entries when they come back through Redis.
        await b.publish("document:1", {"n": "last"})
        assert await _next(here) == {"n": "last"}


async def test_a_replaying_subscriber_gets_the_topic_from_its_first_event(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (redis, a, b):
        for n in range(3):
            await a.publish("message:1", {"n": n})
        await eventually(lambda: _length(redis, "message:1", 3))

        async with (
            b.subscribe("message:1", replay=True) as replayed,
            b.subscribe("message:1") as now,
        ):
            await a.publish("message:1", {"n": 3})
            assert [(await _next(replayed))["n"] for _ in range(4)] == [0, 1, 2, 3]
            assert await _next(now) == {"n": 3}  # without replay: only what came after


async def test_one_process_following_many_topics_gets_each_its_own_events_in_order(
    tmp_path: Path,
) -> None:
    topics = [f"message:{n}" for n in range(20)]
    async with two_brokers(tmp_path) as (_, a, b), contextlib.AsyncExitStack() as stack:
        # All read by one task in B, each from where it joined.
        streams = [await stack.enter_async_context(b.subscribe(topic)) for topic in topics]
        for n in range(5):
            for topic in topics:
                await a.publish(topic, {"topic": topic, "n": n})

        for topic, stream in zip(topics, streams, strict=True):
            received = [await _next(stream) for _ in range(5)]
            assert received == [{"topic": topic, "n": n} for n in range(5)]


async def test_a_retired_topic_keeps_only_its_last_event_and_expires(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (redis, a, _):
        for n in range(5):
            await a.publish("message:2", {"n": n})
        await a.retire("message:2")

        await eventually(lambda: _length(redis, "message:2", 1))
        client = redis.client()
        try:
            assert 0 < await client.ttl(stream_key("message:2")) <= RETIRED_EXPIRY_SECONDS
        finally:
            await client.aclose()


async def test_events_published_while_redis_is_away_arrive_once_it_is_back(tmp_path: Path) -> None:
    async with two_brokers(tmp_path) as (redis, a, b), b.subscribe("document:3") as there:
        await redis.kill()
        await a.publish("document:3", {"n": 1})  # never blocks on Redis
        await redis.start()

        assert await _next(there) == {"n": 1}


async def test_a_replaying_subscriber_joining_mid_stream_gets_each_event_once_in_order(
    tmp_path: Path,
) -> None:
    """The history it reads and the batches it hears meanwhile overlap: each event once."""
    async with two_brokers(tmp_path) as (_, a, b):

        async def publishing() -> None:
            for n in range(400):
                await a.publish("message:7", {"n": n})
                if n % 20 == 0:
                    await asyncio.sleep(0.005)  # several batches, some during the join

        publisher = asyncio.create_task(publishing())
        await asyncio.sleep(0.02)
        async with b.subscribe("message:7", replay=True) as replayed:
            await publisher
            assert [(await _next(replayed))["n"] for _ in range(400)] == list(range(400))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await anext(replayed)  # and nothing twice


async def test_a_listener_that_lost_its_connection_reads_what_it_missed_once_back(
    tmp_path: Path,
) -> None:
    async with (
        two_brokers(tmp_path) as (redis, a, b),
        b.subscribe("message:8") as there,
    ):
        await a.publish("message:8", {"n": 0})
        assert await _next(there) == {"n": 0}
        client = redis.client()
        try:
            # B's listener is cut off (Redis stays up): what A publishes meanwhile is only in
            # the stream, which B reads once it has reconnected.
            assert await client.client_kill_filter(_type="pubsub") >= 2
            for n in range(1, 50):
                await a.publish("message:8", {"n": n})
        finally:
            await client.aclose()

        assert [(await _next(there))["n"] for _ in range(1, 50)] == list(range(1, 50))
        await a.publish("message:8", {"n": "after"})
        assert await _next(there) == {"n": "after"}  # nothing twice, nothing lost


async def test_a_replaying_subscriber_whose_listener_reconnects_meanwhile_misses_nothing(
    tmp_path: Path,
) -> None:
    """While a joining subscription reads its history, the listener hears some entries, loses
    its connection (missing others), reconnects and hears more: the subscriber still gets
    every entry once, in order (what was heard past the gap is read again from the stream)."""
    async with two_brokers(tmp_path) as (redis, a, b):
        for n in range(3):
            await a.publish("message:10", {"n": n})
        await eventually(lambda: _length(redis, "message:10", 3))
        read_history = b._history
        cut = False

        async def history_with_a_cut(key: str, after: tuple[int, int]) -> Any:
            nonlocal cut
            entries = await read_history(key, after)
            if not cut:
                cut = True
                joining = next(iter(b._joining))
                for n in range(3, 6):  # heard while joining
                    await a.publish("message:10", {"n": n})
                await eventually(lambda: _holds(b, joining, 3))
                connections = b._connections
                client = redis.client()
                try:
                    await client.client_kill_filter(_type="pubsub")
                    for n in range(6, 8):  # missed: only in the stream
                        await a.publish("message:10", {"n": n})
                    await eventually(lambda: _length(redis, "message:10", 8))
                    await eventually(lambda: _reconnected(b, connections))
                finally:
                    await client.aclose()
                await a.publish("message:10", {"n": 8})  # heard after the reconnection
                await eventually(lambda: _holds(b, joining, 4))
            return entries

        b._history = history_with_a_cut  # type: ignore[method-assign]
        async with b.subscribe("message:10", replay=True) as replayed:
            assert [(await _next(replayed))["n"] for _ in range(9)] == list(range(9))
            await a.publish("message:10", {"n": 9})
            assert await _next(replayed) == {"n": 9}  # nothing twice before it


async def _holds(broker: RedisBroker, subscription: Any, count: int) -> bool:
    return len(broker._joining.get(subscription, ())) >= count


async def _reconnected(broker: RedisBroker, connections: int) -> bool:
    return broker._connections > connections and broker._listening.is_set()


@pytest.mark.parametrize("replay", [False, True], ids=["live", "replaying"])
async def test_a_subscriber_that_had_nothing_yet_gets_what_was_published_while_cut_off(
    tmp_path: Path, replay: bool
) -> None:
    """A subscription that has received nothing (its stream empty so far) still has a place
    to read on from once the listener is back."""
    async with (
        two_brokers(tmp_path) as (redis, a, b),
        b.subscribe("message:11", replay=replay) as there,
    ):
        await eventually(lambda: _joined(b))
        connections = b._connections
        client = redis.client()
        try:
            assert await client.client_kill_filter(_type="pubsub") >= 2
            for n in range(5):
                await a.publish("message:11", {"n": n})
            await eventually(lambda: _length(redis, "message:11", 5))
        finally:
            await client.aclose()
        await eventually(lambda: _reconnected(b, connections))

        assert [(await _next(there))["n"] for _ in range(5)] == list(range(5))
        await a.publish("message:11", {"n": "after"})
        assert await _next(there) == {"n": "after"}  # nothing twice, nothing lost


async def _joined(broker: RedisBroker) -> bool:
    return not broker._joining


async def test_a_message_on_the_channel_that_is_not_ragstreams_is_ignored(tmp_path: Path) -> None:
    async with (
        two_brokers(tmp_path) as (redis, a, b),
        b.subscribe("document:9") as there,
    ):
        client = redis.client()
        try:
            for junk in ("not json", "[1, 2]", '{"o": "x", "e": [["k"]]}', '{"o": "x"}'):
                await client.publish(CHANNEL, junk)
        finally:
            await client.aclose()
        await a.publish("document:9", {"n": 1})
        assert await _next(there) == {"n": 1}


async def _length(redis: RedisServer, topic: str, length: int) -> bool:
    client = redis.client()
    try:
        return bool(await client.xlen(stream_key(topic)) == length)
    finally:
        await client.aclose()


async def test_a_broker_that_only_publishes_reaches_the_others_and_listens_to_nothing(
    tmp_path: Path,
) -> None:
    async with redis_server(tmp_path / "redis") as redis:
        listening = RedisBroker(redis.url)
        publishing = RedisBroker(redis.url, listen=False)
        await listening.start()
        await publishing.start()
        client = redis.client()
        try:
            async with listening.subscribe("document:1") as there:
                await publishing.publish("document:1", {"n": 1})
                assert await _next(there) == {"n": 1}

            # One subscriber on the channel: the listening broker's listener.
            assert await client.pubsub_numsub(CHANNEL) == [(CHANNEL, 1)]
            with pytest.raises(RuntimeError, match="only publishes"):
                publishing.subscribe("document:1")
        finally:
            await client.aclose()
            await listening.close()
            await publishing.close()
