"""A subscription's waits (`domain/events.py`): `next_within` and the timer behind it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ragstream.domain.events import InMemoryBroker


async def test_next_within_gives_the_waiting_events_in_order_then_none_when_quiet() -> None:
    broker = InMemoryBroker()
    async with broker.subscribe("t") as events:
        await broker.publish("t", {"n": 1})
        await broker.publish("t", {"n": 2})

        assert await events.next_within(60) == {"n": 1}
        assert await events.next_within(60) == {"n": 2}
        assert await events.next_within(0.01) is None


async def test_next_within_wakes_for_an_event_published_while_it_waits() -> None:
    broker = InMemoryBroker()
    async with broker.subscribe("t") as events:
        waiting = asyncio.create_task(events.next_within(60))
        await asyncio.sleep(0)  # it waits now
        assert not waiting.done()

        await broker.publish("t", {"n": 1})

        assert await waiting == {"n": 1}


async def test_waits_that_each_get_an_event_share_one_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many waits, each ended by an event, arm the quiet timer once, not once per wait."""
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    broker = InMemoryBroker()
    async with broker.subscribe("t") as events:
        for n in range(100):
            waiting = asyncio.create_task(events.next_within(60))
            await asyncio.sleep(0)
            await broker.publish("t", {"n": n})
            assert await waiting == {"n": n}

    assert len(armed) == 1


async def test_a_later_wait_is_not_ended_by_the_timer_of_an_earlier_one() -> None:
    """The timer armed by the first wait fires during the second, which started later and has
    its own deadline: the second wait goes on and gets its event."""
    broker = InMemoryBroker()
    async with broker.subscribe("t") as events:
        first = asyncio.create_task(events.next_within(0.2))
        await asyncio.sleep(0)
        await broker.publish("t", {"n": 1})
        assert await first == {"n": 1}
        await asyncio.sleep(0.1)  # the second wait starts half-way to the first's deadline

        second = asyncio.create_task(events.next_within(60))
        await asyncio.sleep(0.3)  # past the first wait's deadline: its timer has fired
        assert not second.done()

        await broker.publish("t", {"n": 2})
        assert await second == {"n": 2}


async def test_leaving_the_subscription_cancels_its_timer() -> None:
    broker = InMemoryBroker()
    async with broker.subscribe("t") as events:
        waiting = asyncio.create_task(events.next_within(60))
        await asyncio.sleep(0)
        await broker.publish("t", {"n": 1})
        await waiting
        timer = events._timer
        assert timer is not None

    assert timer.cancelled()
    assert broker.subscriber_count("t") == 0
