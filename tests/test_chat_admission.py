"""Admission: the server-wide slots, and the per-user limits checked when an exchange is stored."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from ragstream.db.models.chat import Conversation, Message
from ragstream.db.models.users import User
from ragstream.domain.chat.admission import ServerSlots
from ragstream.domain.chat.enums import MessageStatus
from ragstream.domain.chat.service import NewExchange, finish_answer
from ragstream.domain.errors import NotFound, RateLimited
from tests.generation_support import ChatDatabase, chat_database


def test_no_slot_before_start_up_or_during_shutdown() -> None:
    slots = ServerSlots(cap=2)

    with pytest.raises(RateLimited) as refused:
        slots.take()

    assert refused.value.code == "RATE_LIMITED"
    assert refused.value.extensions == {"reason": "SHUTTING_DOWN", "limit": 0, "resetAt": None}
    assert slots.active == 0


def test_slots_run_out_at_the_cap_and_come_back() -> None:
    slots = ServerSlots(cap=2)
    slots.accepting = True
    slots.take()
    slots.take()

    with pytest.raises(RateLimited) as refused:
        slots.take()
    assert refused.value.extensions == {"reason": "SERVER_BUSY", "limit": 2, "resetAt": None}
    assert slots.active == 2

    slots.give_back()
    slots.take()
    assert slots.active == 2


async def test_an_exchange_is_stored_with_the_answer_id_it_was_given(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer = await db.user()
        conversation_id = await db.conversation(viewer)

        exchange = await db.exchange(viewer, conversation_id, "  Where is the report?  ")

        answer = await db.message(exchange.answer.id)
        assert answer is not None
        assert (answer.role, answer.status, answer.content) == ("ASSISTANT", "STREAMING", "")
        assert exchange.question.content == "Where is the report?"
        assert exchange.question.created_at < exchange.answer.created_at


@contextlib.contextmanager
def recorded(db: ChatDatabase) -> Iterator[list[str]]:
    """The SQL of every statement the database is sent inside the block, in order."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    engine = db.sessionmaker.kw["bind"]
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_an_exchange_is_stored_without_reading_its_rows_back(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer = await db.user()
        conversation_id = await db.conversation(viewer)
        with recorded(db) as statements:
            exchange = await db.exchange(viewer, conversation_id)

    [inserts] = [s for s in statements if "INSERT INTO messages" in s]
    assert inserts.count("RETURNING") == 2
    assert all("created_at" in part for part in inserts.split("RETURNING")[1:])
    # What the database filled in came back with the INSERTs: no SELECT of a message by id.
    assert not [s for s in statements if s.startswith("SELECT") and "messages.id = " in s]
    assert exchange.question.created_at < exchange.answer.created_at
    assert exchange.answer.content == ""


async def test_an_exchange_is_stored_in_three_statements(database_url: str, tmp_path: Path) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer = await db.user()
        conversation_id = await db.conversation(viewer)
        before = await updated_at(db, conversation_id)
        with recorded(db) as statements:
            exchange = await db.exchange(viewer, conversation_id)

        # The conversation is read and marked active, and the per-user lock taken, at once;
        # both counts come after the lock in one SELECT; then the two messages and the usage
        # ledger are written together.
        assert [s.split(None, 2)[:2] for s in statements] == [
            ["WITH", "touched"],
            ["SELECT", "(SELECT"],
            ["WITH", "counted"],
        ]
        assert "UPDATE conversations" in statements[0]
        assert "pg_advisory_xact_lock" in statements[0]
        assert "FROM usage_daily" in statements[1]
        assert "FROM messages" in statements[1]
        assert statements[2].count("INSERT INTO messages") == 2
        assert "INSERT INTO usage_daily" in statements[2]
        assert await updated_at(db, conversation_id) > before
        assert await ledger(db, viewer.id) == (1, 0, 0)
        stored = [await db.message(exchange.question.id), await db.message(exchange.answer.id)]
        assert [(m.role, m.status, m.content) for m in stored if m is not None] == [
            ("USER", "COMPLETE", exchange.question.content),
            ("ASSISTANT", "STREAMING", ""),
        ]


async def updated_at(db: ChatDatabase, conversation_id: uuid.UUID) -> datetime:
    async with db.sessionmaker() as session:
        conversation = await session.get(Conversation, conversation_id)
        assert conversation is not None
        return conversation.updated_at


async def test_a_refused_send_leaves_the_conversation_as_it_was(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path, daily_message_limit=1) as db:
        viewer, stranger = await db.user("viewer"), await db.user("stranger")
        conversation_id = await db.conversation(viewer)
        await db.exchange(viewer, conversation_id)
        before = await updated_at(db, conversation_id)
        messages = await db.count("messages")

        with pytest.raises(RateLimited) as limited:
            await db.exchange(viewer, conversation_id)
        with pytest.raises(NotFound) as not_theirs:
            await db.exchange(stranger, conversation_id)

        assert limited.value.code == "RATE_LIMITED"
        assert limited.value.extensions["reason"] == "DAILY_MESSAGE_LIMIT"
        assert not_theirs.value.code == "NOT_FOUND"
        assert await updated_at(db, conversation_id) == before
        assert await db.count("messages") == messages


async def test_a_user_at_the_concurrent_cap_is_refused_and_nothing_is_stored(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path, chat_max_concurrent_generations=1) as db:
        viewer, other = await db.user("viewer"), await db.user("other")
        conversation_id = await db.conversation(viewer)
        await db.exchange(viewer, conversation_id)  # still STREAMING
        before = await db.count("messages")

        with pytest.raises(RateLimited) as refused:
            await db.exchange(viewer, conversation_id)

        assert refused.value.code == "RATE_LIMITED"
        assert refused.value.extensions == {
            "reason": "CONCURRENT_GENERATIONS",
            "limit": 1,
            "resetAt": None,
        }
        assert await db.count("messages") == before
        # The cap is per user: someone else still gets an answer.
        await db.exchange(other, await db.conversation(other))
        assert await db.count("messages") == before + 2


async def test_a_user_past_the_daily_limit_is_refused_and_nothing_is_stored(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path, daily_message_limit=1) as db:
        viewer = await db.user()
        conversation_id = await db.conversation(viewer)
        await db.exchange(viewer, conversation_id)
        before = await db.count("messages")

        with pytest.raises(RateLimited) as refused:
            await db.exchange(viewer, conversation_id)

        assert refused.value.code == "RATE_LIMITED"
        assert refused.value.extensions["reason"] == "DAILY_MESSAGE_LIMIT"
        assert refused.value.extensions["limit"] == 1
        assert await db.count("messages") == before


async def test_only_the_owner_of_the_conversation_may_send(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        owner, stranger = await db.user("owner"), await db.user("stranger")
        conversation_id = await db.conversation(owner)

        with pytest.raises(NotFound) as refused:
            await db.exchange(stranger, conversation_id)
        with pytest.raises(NotFound) as missing:
            await db.exchange(owner, uuid.uuid4())

        assert refused.value.code == missing.value.code == "NOT_FOUND"
        assert await db.count("messages") == 0


async def test_a_send_past_the_cap_waits_for_the_next_free_slot() -> None:
    slots = ServerSlots(cap=1, queue_length=1, wait_seconds=5.0)
    slots.accepting = True
    await slots.enter()
    waiting = asyncio.create_task(slots.enter())
    await asyncio.sleep(0)

    with pytest.raises(RateLimited) as refused:  # the queue is full: refused at once
        await slots.enter()
    slots.give_back()
    await waiting

    assert refused.value.extensions == {"reason": "SERVER_BUSY", "limit": 1, "resetAt": None}
    assert slots.active == 1  # the slot passed on, never above the cap
    slots.give_back()
    assert slots.active == 0


async def test_a_send_that_waits_too_long_is_refused_as_busy() -> None:
    slots = ServerSlots(cap=1, queue_length=5, wait_seconds=0.05)
    slots.accepting = True
    await slots.enter()

    with pytest.raises(RateLimited) as refused:
        await slots.enter()

    assert refused.value.extensions == {"reason": "SERVER_BUSY", "limit": 1, "resetAt": None}
    assert slots.active == 1
    slots.give_back()
    assert slots.active == 0


async def ledger(db: ChatDatabase, user_id: uuid.UUID) -> tuple[int, int, int]:
    """The user's questions, prompt and completion tokens in the usage ledger."""
    async with db.sessionmaker() as session:
        row = (
            await session.execute(
                text(
                    "SELECT coalesce(sum(questions), 0), coalesce(sum(prompt_tokens), 0),"
                    " coalesce(sum(completion_tokens), 0) FROM usage_daily WHERE user_id = :u"
                ),
                {"u": user_id},
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def finish(db: ChatDatabase, exchange: NewExchange, content: str) -> Message | None:
    answer = exchange.answer
    async with db.sessionmaker.begin() as session:
        return await finish_answer(
            session,
            answer.id,
            owner_id=answer.owner_id,
            started_at=answer.created_at,
            status=MessageStatus.COMPLETE,
            content=content,
            model="stub-model",
            prompt_tokens=30,
            completion_tokens=7,
            error_code=None,
        )


async def asked(db: ChatDatabase) -> tuple[User, NewExchange]:
    """A new user's question in a new conversation, with its answer still STREAMING."""
    viewer = await db.user()
    return viewer, await db.exchange(viewer, await db.conversation(viewer))


async def test_an_answers_end_and_its_tokens_are_one_statement(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer, exchange = await asked(db)
        with recorded(db) as statements:
            row = await finish(db, exchange, "The answer.")

        assert [s.split(None, 2)[:2] for s in statements] == [["WITH", "finished"]]
        assert row is not None
        assert (row.status, row.content, row.completion_tokens) == ("COMPLETE", "The answer.", 7)
        stored = await db.message(exchange.answer.id)
        assert stored is not None
        assert (stored.status, stored.content, stored.completed_at) == (
            "COMPLETE",
            "The answer.",
            row.completed_at,
        )
        assert await ledger(db, viewer.id) == (1, 30, 7)


async def test_an_answer_ends_once_and_its_tokens_count_once(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer, exchange = await asked(db)
        assert await finish(db, exchange, "First.") is not None

        assert await finish(db, exchange, "Second.") is None

        stored = await db.message(exchange.answer.id)
        assert stored is not None
        assert stored.content == "First."
        assert await ledger(db, viewer.id) == (1, 30, 7)


DELETE_CONVERSATION = text("DELETE FROM conversations WHERE id = :id")


@pytest.mark.parametrize("while_ending", [False, True])
async def test_an_answer_deleted_with_its_conversation_still_counts_its_tokens(
    database_url: str, tmp_path: Path, while_ending: bool
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer, exchange = await asked(db)
        async with db.sessionmaker() as deleting:
            await deleting.execute(DELETE_CONVERSATION, {"id": exchange.conversation_id})
            if while_ending:  # the end waits for the delete, then finds the answer gone
                ending = asyncio.create_task(finish(db, exchange, "Late."))
                await waiting_on_a_lock(db, "WITH finished")
                await deleting.commit()
                ended = await ending
            else:
                await deleting.commit()
                ended = await finish(db, exchange, "Too late.")

        assert ended is None
        assert await db.message(exchange.answer.id) is None
        assert await ledger(db, viewer.id) == (1, 30, 7)


async def test_sends_racing_for_the_last_questions_of_the_day_pass_only_up_to_the_limit(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(
        database_url, tmp_path, daily_message_limit=3, chat_max_concurrent_generations=10
    ) as db:
        viewer = await db.user()
        conversations = [await db.conversation(viewer) for _ in range(6)]

        sent = await asyncio.gather(
            *(db.exchange(viewer, c) for c in conversations), return_exceptions=True
        )

        refused = [s for s in sent if isinstance(s, RateLimited)]
        assert len(refused) == 3
        assert {r.extensions["reason"] for r in refused} == {"DAILY_MESSAGE_LIMIT"}
        assert len([s for s in sent if isinstance(s, NewExchange)]) == 3
        assert await ledger(db, viewer.id) == (3, 0, 0)
        async with db.sessionmaker() as session:
            stored = await session.scalar(
                text("SELECT count(*) FROM messages WHERE owner_id = :u"), {"u": viewer.id}
            )
        assert stored == 6  # three questions and their answers; the refused stored nothing


async def waiting_on_a_lock(db: ChatDatabase, statement: str) -> None:
    """Until a backend running ``statement`` (its first words) waits for a lock."""
    for _ in range(500):
        async with db.sessionmaker() as session:
            waiting = await session.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND query LIKE :statement"
                ),
                {"statement": statement + "%"},
            )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no backend running {statement!r} waits for a lock")
