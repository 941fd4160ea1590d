"""Events between processes through PostgreSQL LISTEN/NOTIFY (`db/notify.py: PgBroker`).

Two brokers on one database stand for two server processes: each has its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest

from ragstream.db.notify import MAX_PAYLOAD_BYTES, PgBroker, asyncpg_dsn
from ragstream.domain.events import EventStream, Payload
from tests.chat_support import WITHIN, eventually


@contextlib.asynccontextmanager
async def two_brokers(database_url: str) -> AsyncIterator[tuple[PgBroker, PgBroker]]:
    a, b = PgBroker(asyncpg_dsn(database_url)), PgBroker(asyncpg_dsn(database_url))
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _next(events: EventStream) -> Payload:
    async with asyncio.timeout(WITHIN):
        return await anext(events)


async def test_an_event_reaches_subscribers_in_both_processes_once(database_url: str) -> None:
    async with (
        two_brokers(database_url) as (a, b),
        a.subscribe("document:1") as here,
        b.subscribe("document:1") as there,
    ):
        await a.publish("document:1", {"status": "READY"})
        await a.publish("document:1", {"status": "DONE"})

        assert await _next(there) == {"status": "READY"}
        assert await _next(there) == {"status": "DONE"}
        assert await _next(here) == {"status": "READY"}
        assert await _next(here) == {"status": "DONE"}
        # Its own notifications come back to A through the database, and are dropped.
        await b.publish("document:1", {"status": "LAST"})
        assert await _next(here) == {"status": "LAST"}


async def test_events_arrive_in_the_order_they_were_published(database_url: str) -> None:
    async with two_brokers(database_url) as (a, b), b.subscribe("message:x") as there:
        for n in range(500):
            await a.publish("message:x", {"n": n})

        received = [(await _next(there))["n"] for _ in range(500)]

    assert received == list(range(500))


async def test_what_was_published_just_before_a_close_still_goes(database_url: str) -> None:
    b = PgBroker(asyncpg_dsn(database_url))
    await b.start()
    try:
        async with b.subscribe("document:1") as there:
            a = PgBroker(asyncpg_dsn(database_url))
            await a.start()
            await a.publish("document:1", {"status": "READY"})
            await a.close()  # at once: the event is still in A's outbox

            assert await _next(there) == {"status": "READY"}
    finally:
        await b.close()


async def test_an_event_too_large_for_a_notification_is_refused(database_url: str) -> None:
    async with two_brokers(database_url) as (a, b), b.subscribe("t") as there:
        with pytest.raises(ValueError, match="larger than a notification"):
            await a.publish("t", {"text": "x" * 8_000})
        with pytest.raises(ValueError, match="larger than a notification"):
            await a.publish("t", {"text": "€" * 2_700})  # 2,700 characters, 8,100 bytes
        await a.publish("t", {"text": "small"})
        await a.publish("t", {"text": "€" * 2_600})  # 7,800 bytes: sent as they are

        assert await _next(there) == {"text": "small"}  # nothing of the refused ones
        assert await _next(there) == {"text": "€" * 2_600}


async def test_a_lost_connection_is_reopened_and_listened_on_again(
    database_url: str,
) -> None:
    async with two_brokers(database_url) as (a, b), b.subscribe("t") as there:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            # Every event connection of this database goes: both brokers lose theirs.
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'ragstream-events' AND datname = current_database()"
            )
        finally:
            await conn.close()

        async def delivered() -> bool:
            await a.publish("t", {"ping": True})
            try:
                async with asyncio.timeout(0.2):
                    return await anext(there) == {"ping": True}
            except TimeoutError:
                return False

        await eventually(delivered)


async def test_a_connection_caught_reading_its_end_is_replaced_and_nothing_is_lost(
    database_url: str,
) -> None:
    """When the server ends the connection while asyncpg is still reading the goodbye, the next
    statement raises InternalClientError ("another operation is in progress"): the batch is
    kept, the connection replaced, and the sender goes on."""
    a, b = PgBroker(asyncpg_dsn(database_url)), PgBroker(asyncpg_dsn(database_url))
    send = a._send
    failed: list[asyncpg.Connection] = []

    async def send_once_refused(batch: list[bytes]) -> None:
        if batch and not failed:
            assert a._conn is not None
            failed.append(a._conn)
            raise asyncpg.InternalClientError("cannot switch to state 11; another operation")
        await send(batch)

    a._send = send_once_refused  # type: ignore[method-assign]  # before the sender starts
    await a.start()
    await b.start()
    try:
        async with b.subscribe("t") as there:
            await a.publish("t", {"n": 1})
            await a.publish("t", {"n": 2})
            assert await _next(there) == {"n": 1}
            assert await _next(there) == {"n": 2}
    finally:
        await a.close()
        await b.close()
    assert len(failed) == 1
    assert failed[0].is_closed()  # the refused connection was let go


async def test_a_process_gets_only_the_events_of_topics_it_follows(database_url: str) -> None:
    async with two_brokers(database_url) as (a, b), b.subscribe("message:1") as there:
        await a.publish("message:2", {"n": 2})  # nobody follows it on B
        await a.publish("message:1", {"n": 1})
        await a.publish("process:x", {"n": 3})

        assert await _next(there) == {"n": 1}
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await anext(there)


async def test_events_too_many_for_one_notification_go_in_several_in_order(
    database_url: str,
) -> None:
    texts = [f"{n:04d}" + "x" * 3_000 for n in range(20)]  # two fit in a notification
    async with two_brokers(database_url) as (a, b), b.subscribe("message:x") as there:
        for text in texts:
            await a.publish("message:x", {"text": text})

        received = [(await _next(there))["text"] for _ in texts]

    assert received == texts


def test_a_batch_is_packed_into_notifications_within_the_size_limit() -> None:
    broker = PgBroker("postgresql://unused")
    # Some texts take two or three bytes a character: the limit is on bytes.
    entries = [
        f'["t",{{"n":{n},"text":"{"yé€"[n % 3] * (n * 97 % 2_000)}"}}]'.encode() for n in range(200)
    ]

    payloads = broker._notifications(entries)

    assert all(len(payload.encode()) <= MAX_PAYLOAD_BYTES for payload in payloads)
    unpacked = [entry for payload in payloads for entry in json.loads(payload)["e"]]
    assert unpacked == [json.loads(entry) for entry in entries]
    assert len(payloads) < len(entries) // 2  # packed, not one notification per event


async def test_a_broker_that_only_publishes_reaches_the_others_and_listens_to_nothing(
    database_url: str,
) -> None:
    listening = PgBroker(asyncpg_dsn(database_url))
    publishing = PgBroker(asyncpg_dsn(database_url), listen=False)
    await listening.start()
    await publishing.start()
    try:
        async with listening.subscribe("document:1") as there:
            await publishing.publish("document:1", {"status": "READY"})
            assert await _next(there) == {"status": "READY"}

        # On each broker's own connection, which its lock keeps to one operation at a time.
        async with publishing._lock:
            assert publishing._conn is not None
            assert await publishing._conn.fetch("SELECT pg_listening_channels()") == []
        async with listening._lock:
            assert listening._conn is not None
            channels = await listening._conn.fetch("SELECT pg_listening_channels() AS c")
        assert [row["c"] for row in channels] == ["ragstream_events"]
        with pytest.raises(RuntimeError, match="only publishes"):
            publishing.subscribe("document:1")
    finally:
        await listening.close()
        await publishing.close()
