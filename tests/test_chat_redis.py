"""Servers on one database fan out through a real Redis (`RAGSTREAM_REDIS_URL`): an answer
generated on one is resumed and cancelled through another, and survives Redis going away.

Two servers run in this test process (each its own state, lease, pool and Redis connections);
the last tests run `ragstream serve` processes. Redis is a real `redis-server` started per test.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from sqlalchemy import text

from ragstream.domain.chat.remote import message_topic
from ragstream.redis_events import RETIRED_EXPIRY_SECONDS, RedisBroker, stream_key
from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CANCEL,
    WITHIN,
    eventually,
    joined,
    kinds,
    new_conversation,
    send,
    stored_message,
    stream_all,
)
from tests.redis_support import RedisServer, redis_server
from tests.support import LiveServer
from tests.test_chat_limits import DELETE
from tests.test_chat_replicas import _abandoned, _answering
from tests.test_chat_replicas import two_servers as replicas_two_servers
from tests.test_chat_restart import _row
from tests.test_scale_processes import _leases, _status_is, serving, serving_all

TOKENS = [f"word{i} " for i in range(200)]
FULL = "".join(TOKENS)


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path / "redis") as server:
        yield server


@contextlib.asynccontextmanager
async def two_servers(
    database_url: str, tmp_path: Path, stub: ChatStub, redis: RedisServer
) -> AsyncIterator[tuple[LiveServer, LiveServer]]:
    async with replicas_two_servers(database_url, tmp_path, stub, redis_url=redis.url) as (a, b):
        assert isinstance(a.state.broker, RedisBroker)
        assert isinstance(b.state.broker, RedisBroker)
        yield a, b


async def _stream_entries(redis: RedisServer, message_id: str) -> list[dict[str, str]]:
    client = redis.client()
    try:
        entries = cast(
            "list[tuple[str, dict[str, str]]]",
            await client.xrange(_key(message_id)),
        )
    finally:
        await client.aclose()
    return [fields for _, fields in entries]


def _key(message_id: str) -> str:
    return stream_key(message_topic(uuid.UUID(message_id)))


async def _ttl(redis: RedisServer, message_id: str) -> int:
    client = redis.client()
    try:
        ttl: int = await client.ttl(_key(message_id))
    finally:
        await client.aclose()
    return ttl


async def test_an_answer_generated_on_one_server_is_resumed_on_another_through_redis(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with two_servers(database_url, tmp_path, chat_stub, redis) as (a, b):
        account, answer = await _answering(a, chat_stub, tokens=5)
        # The answer has its Redis Stream from its start, before anyone follows it.
        await eventually(lambda: _has_entries(redis, answer["id"]))

        events = await stream_all(b, account.access_token, answer["id"], from_offset=7)

        assert kinds(events)[0] == "SourcesRetrieved"
        assert kinds(events)[-1] == "GenerationCompleted"
        assert joined(events, start=7) == FULL[7:]  # no gap, no duplicate
        assert kinds(events).count("TokenDelta") > 1  # followed live
        assert (await stored_message(a, answer["id"]))["content"] == FULL
        # Once ended, the stream is trimmed to its last entry (the end) and expires.
        await eventually(lambda: _retired(redis, answer["id"]))
        assert 0 < await _ttl(redis, answer["id"]) <= RETIRED_EXPIRY_SECONDS


async def _has_entries(redis: RedisServer, message_id: str) -> bool:
    return len(await _stream_entries(redis, message_id)) > 0


async def _retired(redis: RedisServer, message_id: str) -> bool:
    entries = await _stream_entries(redis, message_id)
    return len(entries) == 1 and '"kind":"end"' in entries[0]["e"]


async def test_an_answer_generated_on_one_server_is_cancelled_through_another_via_redis(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with two_servers(database_url, tmp_path, chat_stub, redis) as (a, b):
        account, answer = await _answering(a, chat_stub, tokens=5)

        result = await b.execute(CANCEL, {"id": answer["id"]}, token=account.access_token)

        cancelled = result.ok()["cancelGeneration"]
        assert cancelled["status"] == "CANCELLED"
        assert cancelled["content"]
        assert FULL.startswith(cancelled["content"])
        assert cancelled["content"] != FULL
        stored = await stored_message(a, answer["id"])
        assert (stored["status"], stored["content"]) == ("CANCELLED", cancelled["content"])
        await eventually(lambda: _abandoned(chat_stub))  # the provider call was stopped on A
        assert not a.state.chat.active


async def test_with_redis_gone_a_cancel_through_another_server_still_reaches_the_owner(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with two_servers(database_url, tmp_path, chat_stub, redis) as (a, b):
        account, answer = await _answering(a, chat_stub, tokens=5)
        await redis.kill()

        # The request goes through the database: A reads it with its next write of the text.
        result = await b.execute(CANCEL, {"id": answer["id"]}, token=account.access_token)

        cancelled = result.ok()["cancelGeneration"]
        assert cancelled["status"] == "CANCELLED"
        assert FULL.startswith(cancelled["content"])
        assert cancelled["content"] != FULL
        stored = await stored_message(a, answer["id"])
        assert (stored["status"], stored["content"]) == ("CANCELLED", cancelled["content"])
        await eventually(lambda: _abandoned(chat_stub))  # the provider call was stopped on A


async def test_with_redis_gone_a_conversation_deleted_through_another_server_stops_the_owner(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with two_servers(database_url, tmp_path, chat_stub, redis) as (a, b):
        account = await a.register()
        conversation_id = await new_conversation(a, account.access_token)
        answer = await send(a, account.access_token, conversation_id, "Go on")
        await chat_stub.wait_for_tokens(5)
        await redis.kill()

        deleted = await b.execute(DELETE, {"id": conversation_id}, token=account.access_token)

        assert deleted.ok()["deleteConversation"] == conversation_id
        # No broker to say so: A finds the answer's row gone with its next write of the text.
        await eventually(lambda: _abandoned(chat_stub))
        await eventually(lambda: _idle(a))
        async with a.state.sessionmaker() as session:  # nothing stored it again
            left = await session.scalar(
                text("SELECT count(*) FROM messages WHERE id = :id"), {"id": answer["id"]}
            )
        assert left == 0


async def _idle(server: LiveServer) -> bool:
    return not server.state.chat.active


@pytest.mark.parametrize("back", [True, False], ids=["restarted", "gone"])
async def test_redis_lost_mid_answer_the_answer_is_stored_and_the_follower_gets_the_rest(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer, back: bool
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with two_servers(database_url, tmp_path, chat_stub, redis) as (a, b):
        account, answer = await _answering(a, chat_stub, tokens=5)
        received: list[dict[str, Any]] = []
        follower = asyncio.create_task(
            stream_all(b, account.access_token, answer["id"], into=received)
        )
        await chat_stub.wait_for_tokens(20)

        await redis.kill()
        if back:
            await chat_stub.wait_for_tokens(60)
            await redis.start()  # empty: what it held is gone
        else:
            # While Redis is gone the follower gets the text A saves, as it is saved: well
            # past what Redis carried before it went, before the answer ends.
            generation = await chat_stub.wait_for_tokens(170)
            assert not generation.finished
            assert len(joined(received)) >= len("".join(TOKENS[:60]))

        # Never a hang: the rest comes through Redis once back, or from the database.
        async with asyncio.timeout(WITHIN):
            events = await follower
        assert kinds(events)[-1] == "GenerationCompleted"
        assert joined(events) == FULL  # no gap and no duplicate
        stored = await stored_message(a, answer["id"])
        assert (stored["status"], stored["content"]) == ("COMPLETE", FULL)


async def test_serve_processes_resume_and_cancel_through_redis(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    env = {"RAGSTREAM_REDIS_URL": redis.url}
    async with serving_all(database_url, [tmp_path / "a", tmp_path / "b"], chat_stub, **env) as (
        (_, a),
        (_, b),
    ):
        account, answer = await _answering(a, chat_stub, tokens=5)
        events = await stream_all(b, account.access_token, answer["id"], from_offset=3)
        assert joined(events, start=3) == FULL[3:]
        assert kinds(events).count("TokenDelta") > 1
        assert await _has_entries(redis, answer["id"])  # it went through Redis

        conversation_id = await new_conversation(a, account.access_token)
        second = await send(a, account.access_token, conversation_id, "Again")
        await eventually(lambda: _streams(chat_stub, 2))
        await chat_stub.wait_for_tokens(5, stream=1)
        result = await b.execute(CANCEL, {"id": second["id"]}, token=account.access_token)
        cancelled = result.ok()["cancelGeneration"]
        assert cancelled["status"] == "CANCELLED"
        assert await _row(database_url, second["id"]) == {
            "status": "CANCELLED",
            "content": cancelled["content"],
        }


async def _streams(stub: ChatStub, count: int) -> bool:
    return len(stub.streams) == count


async def test_redis_a_new_replica_interrupts_nothing_a_killed_ones_answers_are_interrupted(
    database_url: str, tmp_path: Path, chat_stub: ChatStub, redis: RedisServer
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS * 20, delay=0.03)
    env = {"RAGSTREAM_REDIS_URL": redis.url, "RAGSTREAM_CHAT_LEASE_SECONDS": "2"}
    async with serving_all(database_url, [tmp_path / "a", tmp_path / "b"], chat_stub, **env) as (
        (process_a, a),
        (_, b),
    ):
        account, answer = await _answering(a, chat_stub, tokens=5)
        follower = asyncio.create_task(stream_all(b, account.access_token, answer["id"]))

        # A third replica starts (and sweeps once) while A generates: nothing is interrupted.
        async with serving(database_url, tmp_path / "c", chat_stub, **env):
            assert await _leases(database_url) == 3
            assert (await _row(database_url, answer["id"]))["status"] == "STREAMING"

            process_a.send_signal(signal.SIGKILL)
            await process_a.wait()
            await eventually(lambda: _status_is(database_url, answer["id"], "INTERRUPTED"))

        events = await follower
        stored = await _row(database_url, answer["id"])
        assert kinds(events)[-1] == "GenerationFailed"
        assert events[-1]["code"] == "INTERRUPTED"
        assert stored["content"]
        assert joined(events) == stored["content"]  # everything saved, once, in order
        assert (FULL * 20).startswith(stored["content"])
