"""The running stream of one answer: provider deltas into its stream, and every way it ends,
against the OpenAI-compatible stub and the real database."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ragstream.db.models.chat import Conversation
from ragstream.domain.chat.answer import Answer
from ragstream.domain.chat.service import NewExchange
from ragstream.domain.chat.streams import Crowd, GenerationStream
from ragstream.domain.chat.views import MessageView
from ragstream.domain.llm.extractive import ExtractiveChatProvider
from tests.chat_stub import CHAT_COMPLETIONS, ChatScript, ChatStub
from tests.chat_support import eventually
from tests.generation_support import ChatDatabase, chat_database

TOKENS = [f"word{i} " for i in range(40)]


@pytest.fixture
async def db(database_url: str, tmp_path: Path, chat_stub: ChatStub) -> AsyncIterator[ChatDatabase]:
    async with chat_database(database_url, tmp_path, chat_stub, chat_timeout_seconds=30) as db:
        yield db


async def new_answer(db: ChatDatabase) -> tuple[Answer, NewExchange]:
    viewer = await db.user()
    await db.document(viewer, "Notes", "The notes say the report is due on Friday.")
    exchange = await db.exchange(viewer, await db.conversation(viewer), "When is the report due?")
    answer = Answer(exchange.answer.id, viewer, GenerationStream(), db.collaborators())
    return answer, exchange


async def streaming(
    db: ChatDatabase, stub: ChatStub, tokens: int
) -> tuple[Answer, asyncio.Task[MessageView]]:
    """An answer being generated slowly, once its stream holds its first ``tokens`` tokens."""
    stub.script = ChatScript(tokens=TOKENS, delay=0.02)
    answer, exchange = await new_answer(db)
    running = asyncio.create_task(answer.generate(exchange))
    while answer.stream.length < len("".join(TOKENS[:tokens])):
        await answer.stream.changed()
    return answer, running


async def stored(db: ChatDatabase, message_id: uuid.UUID) -> tuple[str, str, str | None]:
    row = await db.message(message_id)
    assert row is not None
    return row.status, row.content, row.error_code


async def test_a_complete_answer_streams_every_delta_and_stores_the_end(
    db: ChatDatabase, chat_stub: ChatStub
) -> None:
    answer, exchange = await new_answer(db)

    view = await answer.generate(exchange)

    assert await stored(db, answer.id) == ("COMPLETE", "Hello from the stub.", None)
    assert (view.status, view.content, view.error_code) == await stored(db, answer.id)
    assert view.completion_tokens == 5  # the stub's usage report
    assert [s.title for s in view.sources] == ["Notes"]
    assert answer.stream.text() == view.content
    assert answer.stream.ending is not None
    assert answer.stream.ending.message == view
    assert answer.stream.ending.error_code is None


async def test_a_cancel_stops_the_provider_and_keeps_the_partial_text(
    db: ChatDatabase, chat_stub: ChatStub
) -> None:
    answer, running = await streaming(db, chat_stub, 3)

    answer.stop("CANCELLED")
    view = await running

    assert view.status == "CANCELLED"
    assert view.error_code is None
    assert len(view.content) >= len("".join(TOKENS[:3]))
    assert "".join(TOKENS).startswith(view.content)
    assert view.content != "".join(TOKENS)
    assert await stored(db, answer.id) == ("CANCELLED", view.content, None)
    record = chat_stub.streams[-1]
    await eventually(lambda: done(record.abandoned))


class TimedStream(GenerationStream):
    """A stream that notes when each delta was appended (on the event loop's clock)."""

    __slots__ = ("appended",)

    def __init__(self) -> None:
        super().__init__()
        self.appended: list[float] = []

    def append(self, delta: str) -> None:
        self.appended.append(asyncio.get_running_loop().time())
        super().append(delta)


async def test_with_a_crowd_the_provider_is_read_about_once_per_window(
    db: ChatDatabase, chat_stub: ChatStub
) -> None:
    # given a provider sending a token every 20 ms and followers sent to every 100 ms
    chat_stub.script = ChatScript(tokens=TOKENS[:15], delay=0.02)
    pace = 0.1
    crowd = Crowd(events_per_second=100)
    crowd.size = 10  # followers: a window of 10 / 100 s
    viewer = await db.user()
    exchange = await db.exchange(viewer, await db.conversation(viewer), "Go on")
    tools = dataclasses.replace(db.collaborators(), crowd=crowd)
    grid = tools.settings.chat_coalesce_window_ms / 1000
    stream = TimedStream()

    # when the answer is generated
    view = await Answer(exchange.answer.id, viewer, stream, tools).generate(exchange)

    # then every token is there, in order, from fewer reads than tokens: each read began on
    # the grid of base windows, at least a window (less half a grid step, the rounding to
    # the grid) after the one before had been appended
    assert stream.paced
    assert view.status == "COMPLETE"
    assert view.content == "".join(TOKENS[:15])
    reads = len(stream.appended)
    assert 1 < reads < 15
    gaps = [b - a for a, b in zip(stream.appended, stream.appended[1:], strict=False)]
    assert min(gaps) >= pace - grid / 2 - 1e-9


async def test_a_provider_that_makes_its_text_when_asked_is_read_as_it_goes(
    db: ChatDatabase,
) -> None:
    # given the offline provider (each word made when it is asked for) and a crowd
    crowd = Crowd(events_per_second=100)
    crowd.size = 10
    viewer = await db.user()
    await db.document(viewer, "Notes", "The notes say the report is due on Friday.")
    exchange = await db.exchange(viewer, await db.conversation(viewer), "When is it due?")
    provider = ExtractiveChatProvider(word_delay=0.001)
    tools = dataclasses.replace(db.collaborators(), provider=provider, crowd=crowd)
    stream = TimedStream()

    # when the answer is generated
    view = await Answer(exchange.answer.id, viewer, stream, tools).generate(exchange)

    # then it is not paced: every word is read, and appended, as it is made
    assert view.status == "COMPLETE"
    assert not stream.paced
    assert len(stream.appended) == len(view.content.split())


async def done(value: bool) -> bool:
    return value


async def test_an_answer_stopped_before_its_work_starts_never_calls_the_provider(
    db: ChatDatabase, chat_stub: ChatStub
) -> None:
    answer, exchange = await new_answer(db)

    answer.stop("INTERRUPTED")
    view = await answer.generate(exchange)

    assert (view.status, view.content, view.error_code) == ("INTERRUPTED", "", "INTERRUPTED")
    assert await stored(db, answer.id) == ("INTERRUPTED", "", "INTERRUPTED")
    assert chat_stub.requests_to(CHAT_COMPLETIONS) == []


async def test_the_first_stop_counts(db: ChatDatabase, chat_stub: ChatStub) -> None:
    answer, running = await streaming(db, chat_stub, 1)

    answer.stop("CANCELLED")
    answer.stop("INTERRUPTED")
    view = await running

    assert view.status == "CANCELLED"


async def test_a_provider_error_fails_the_answer_with_its_code(
    db: ChatDatabase, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, error_after=2)
    answer, exchange = await new_answer(db)

    view = await answer.generate(exchange)

    assert await stored(db, answer.id) == ("FAILED", "word0 word1 ", "PROVIDER_ERROR")
    assert (view.status, view.content, view.error_code) == await stored(db, answer.id)
    assert answer.stream.ending is not None
    assert answer.stream.ending.error_code == "PROVIDER_ERROR"


async def test_an_answer_past_the_overall_time_limit_fails_as_a_timeout(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    # The stub stalls after two tokens, within the stall limit but past the overall limit
    # (long enough for the two tokens to arrive on a busy machine).
    chat_stub.script = ChatScript(tokens=TOKENS, stall_after=2)
    async with chat_database(database_url, tmp_path, chat_stub, chat_timeout_seconds=3.0) as db:
        answer, exchange = await new_answer(db)

        view = await answer.generate(exchange)

        assert (view.status, view.error_code) == ("FAILED", "PROVIDER_TIMEOUT")
        assert view.content == "word0 word1 "
        assert await stored(db, answer.id) == ("FAILED", "word0 word1 ", "PROVIDER_TIMEOUT")


async def test_an_answer_whose_conversation_is_deleted_ends_as_such(
    db: ChatDatabase, chat_stub: ChatStub
) -> None:
    answer, running = await streaming(db, chat_stub, 2)
    row = await db.message(answer.id)
    assert row is not None
    async with db.sessionmaker.begin() as session:
        await session.delete(await session.get(Conversation, row.conversation_id))

    answer.stop("CONVERSATION_DELETED")
    view: MessageView = await running

    assert (view.status, view.error_code) == ("FAILED", "CONVERSATION_DELETED")
    assert view.content
    assert await db.message(answer.id) is None
