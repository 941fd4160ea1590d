"""The outbox each cross-process broker sends from (`domain/events.py: Outbox`)."""

from __future__ import annotations

import asyncio

from ragstream.domain.events import Outbox


async def test_what_is_published_within_the_pace_goes_in_the_next_batch_in_order() -> None:
    outbox: Outbox[int] = Outbox(100, pace=0.5)
    batches: list[list[int]] = []
    sent = asyncio.Event()

    async def send(batch: list[int]) -> None:
        batches.append(batch)
        sent.set()

    sender = asyncio.create_task(outbox.send_forever(send, (OSError,)))
    try:
        outbox.put(1)
        await sent.wait()  # the first entry goes at once
        sent.clear()
        for n in (2, 3, 4):
            outbox.put(n)
            await asyncio.sleep(0)  # the sender runs in between, and waits out the pace
        assert batches == [[1]]

        await sent.wait()

        assert batches == [[1], [2, 3, 4]]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_without_a_pace_each_entry_put_after_a_send_goes_on_its_own() -> None:
    outbox: Outbox[int] = Outbox(100)
    batches: list[list[int]] = []
    sent = asyncio.Queue[None]()

    async def send(batch: list[int]) -> None:
        batches.append(batch)
        sent.put_nowait(None)

    sender = asyncio.create_task(outbox.send_forever(send, (OSError,)))
    try:
        for n in (1, 2, 3):
            outbox.put(n)
            await sent.get()

        assert batches == [[1], [2], [3]]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def test_drain_waits_until_what_was_put_is_sent_and_no_longer_than_its_timeout() -> None:
    outbox: Outbox[int] = Outbox(100, pace=0.05)
    batches: list[list[int]] = []
    failing = False

    async def send(batch: list[int]) -> None:
        if failing:
            raise OSError("the broker is away")
        batches.append(batch)

    assert await outbox.drain(0)  # nothing put: nothing to wait for
    sender = asyncio.create_task(outbox.send_forever(send, (OSError,)))
    try:
        outbox.put(1)
        outbox.put(2)
        assert await outbox.drain(5)
        assert batches == [[1, 2]]

        failing = True
        outbox.put(3)
        assert not await outbox.drain(0.3)  # kept by a broker that is away, not forever
        failing = False
        assert await outbox.drain(10)
        assert batches == [[1, 2], [3]]
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
