"""The flusher: the text of running answers reaches the database at intervals, not per token."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete

from ragstream.db.models.chat import Message
from ragstream.db.models.users import User
from ragstream.db.repositories.chat import MessageRepository
from ragstream.domain.chat.enums import MessageStatus
from ragstream.domain.chat.flusher import Flusher
from ragstream.domain.chat.streams import GenerationStream
from ragstream.domain.chat.views import Ending, message_view
from tests.chat_support import eventually
from tests.database_faults import database_unreachable
from tests.generation_support import ChatDatabase, chat_database


async def running_answers(db: ChatDatabase, count: int) -> list[uuid.UUID]:
    viewer = await db.user()
    conversation_id = await db.conversation(viewer)
    return [(await db.exchange(viewer, conversation_id)).answer.id for _ in range(count)]


async def one_grown_answer(
    db: ChatDatabase, text: str, interval: float = 3600
) -> tuple[Flusher, GenerationStream, uuid.UUID]:
    """A running answer whose stream holds ``text``, tracked by a new flusher that was told."""
    [message_id] = await running_answers(db, 1)
    flusher = Flusher(db.sessionmaker, interval=interval)
    stream = GenerationStream()
    flusher.track(message_id, stream)
    stream.append(text)
    flusher.grew(message_id)
    return flusher, stream, message_id


async def owner(db: ChatDatabase, message_id: uuid.UUID) -> User:
    async with db.sessionmaker() as session:
        row = await session.get(Message, message_id)
        assert row is not None
        user = await session.get(User, row.owner_id)
    assert user is not None
    return user


async def content(db: ChatDatabase, message_id: uuid.UUID) -> str:
    row = await db.message(message_id)
    assert row is not None
    return row.content


async def test_a_flush_writes_what_grew_of_every_tracked_answer(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        grown, quiet, forgotten = await running_answers(db, 3)
        flusher = Flusher(db.sessionmaker, interval=3600)
        streams = {message_id: GenerationStream() for message_id in (grown, quiet, forgotten)}
        for message_id, stream in streams.items():
            flusher.track(message_id, stream)
            stream.append("Hello")
        flusher.grew(grown)
        flusher.grew(forgotten)
        flusher.forget(forgotten)

        await flusher.flush()

        assert await content(db, grown) == "Hello"
        assert await content(db, quiet) == ""  # grew, but nobody said so
        assert await content(db, forgotten) == ""

        streams[grown].append(", world")
        flusher.grew(grown)
        await flusher.flush()
        assert await content(db, grown) == "Hello, world"


async def test_an_answer_that_ended_is_not_overwritten(database_url: str, tmp_path: Path) -> None:
    async with chat_database(database_url, tmp_path) as db:
        flusher, _, message_id = await one_grown_answer(db, "partial")
        async with db.sessionmaker.begin() as session:
            row = await session.get(Message, message_id)
            assert row is not None
            row.status, row.content = MessageStatus.COMPLETE, "the stored end"

        await flusher.flush()

        assert await content(db, message_id) == "the stored end"


async def test_a_failed_write_is_retried(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        flusher, _, message_id = await one_grown_answer(db, "kept for later")

        async with database_unreachable(database_url):
            await flusher.flush()
        assert "could not save partial answers" in caplog.text
        assert await content(db, message_id) == ""

        await flusher.flush()  # nothing grew since, but the failed text is still owed
        assert await content(db, message_id) == "kept for later"


async def test_running_flushes_in_the_background_until_the_stream_ends(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        flusher, stream, message_id = await one_grown_answer(db, "first", interval=0.01)

        async with flusher.running():
            await eventually(lambda: _is(db, message_id, "first"))
            stream.append(" second")
            flusher.grew(message_id)
            await eventually(lambda: _is(db, message_id, "first second"))


async def _is(db: ChatDatabase, message_id: uuid.UUID, text: str) -> bool:
    return await content(db, message_id) == text


async def test_a_flush_skips_finished_streams(database_url: str, tmp_path: Path) -> None:
    async with chat_database(database_url, tmp_path) as db:
        flusher, stream, message_id = await one_grown_answer(db, "done")
        answer = await db.message(message_id)
        assert answer is not None
        stream.finish(Ending(message_view(answer)))

        await flusher.flush()

        assert await content(db, message_id) == ""


async def test_a_write_brings_back_the_stops_asked_for_its_answers(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        [asked, other] = await running_answers(db, 2)
        viewer = await owner(db, asked)
        stops: list[tuple[uuid.UUID, str]] = []
        flusher = Flusher(db.sessionmaker, 3600, lambda *stop: stops.append(stop))
        for message_id in (asked, other):
            stream = GenerationStream()
            flusher.track(message_id, stream)
            stream.append("Some text")
            flusher.grew(message_id)
        async with db.sessionmaker.begin() as session:
            assert await MessageRepository(session).request_stop(viewer, asked, "CANCELLED")

        await flusher.flush()

        assert stops == [(asked, "CANCELLED")]
        assert await content(db, asked) == "Some text"  # written all the same


async def test_an_answer_whose_text_does_not_grow_is_still_checked_for_a_stop(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        [message_id] = await running_answers(db, 1)
        viewer = await owner(db, message_id)
        stops: list[tuple[uuid.UUID, str]] = []
        flusher = Flusher(db.sessionmaker, 3600, lambda *stop: stops.append(stop), stop_check=0.05)
        async with flusher.running():
            flusher.track(message_id, GenerationStream())  # preparing: no text, no wake
            async with db.sessionmaker.begin() as session:
                assert await MessageRepository(session).request_stop(
                    viewer, message_id, "CANCELLED"
                )
            await eventually(lambda: _has(stops))

        assert stops[0] == (message_id, "CANCELLED")
        assert await content(db, message_id) == ""  # nothing was written to find it


async def test_a_stop_asked_for_an_ended_answer_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        [message_id] = await running_answers(db, 1)
        viewer = await owner(db, message_id)
        async with db.sessionmaker.begin() as session:
            row = await session.get(Message, message_id)
            assert row is not None
            row.status, row.content = MessageStatus.COMPLETE, "done"
        async with db.sessionmaker.begin() as session:
            assert not await MessageRepository(session).request_stop(
                viewer, message_id, "CANCELLED"
            )
            assert await MessageRepository(session).requested_stops([message_id]) == []


async def _has(items: list[tuple[uuid.UUID, str]]) -> bool:
    return bool(items)


async def test_an_answer_whose_row_is_gone_is_stopped_as_deleted_by_a_write_and_by_a_check(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        [written, idle, kept] = await running_answers(db, 3)
        stops: list[tuple[uuid.UUID, str]] = []
        flusher = Flusher(db.sessionmaker, 3600, lambda *stop: stops.append(stop), stop_check=0)
        for message_id in (written, idle, kept):
            stream = GenerationStream()
            flusher.track(message_id, stream)
            if message_id != idle:
                stream.append("Some text")
                flusher.grew(message_id)
        async with db.sessionmaker.begin() as session:  # as a conversation's delete does
            await session.execute(delete(Message).where(Message.id.in_([written, idle])))

        await flusher.flush()
        assert stops == [(written, "CONVERSATION_DELETED")]
        await flusher.check_stops()  # every tracked answer is due (stop_check 0)

        assert set(stops) == {(written, "CONVERSATION_DELETED"), (idle, "CONVERSATION_DELETED")}
        assert await content(db, kept) == "Some text"  # the others were written as before


async def test_a_stop_is_left_only_by_the_answers_owner(database_url: str, tmp_path: Path) -> None:
    async with chat_database(database_url, tmp_path) as db:
        [message_id] = await running_answers(db, 1)
        stranger = await db.user("stranger")
        async with db.sessionmaker.begin() as session:
            assert not await MessageRepository(session).request_stop(
                stranger, message_id, "CANCELLED"
            )
        async with db.sessionmaker() as session:
            assert await MessageRepository(session).requested_stops([message_id]) == []
