"""Answer preparation: retrieval over what the asker may read, sources within their budget and
stored with the answer, history and the prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from ragstream.db.models.chat import Message, MessageSource
from ragstream.domain.chat.enums import MessageStatus
from ragstream.domain.chat.preparation import RetrievalFailed, prepare_answer
from ragstream.domain.chat.prompt import SOURCE_OVERHEAD_TOKENS
from ragstream.domain.llm.openai_client import openai_client
from ragstream.domain.llm.openai_embeddings import OpenAIEmbedder
from ragstream.domain.text import estimate_tokens
from tests.chat_stub import ChatStub
from tests.generation_support import ChatDatabase, chat_database
from tests.openai_stub import EMBEDDINGS

MERCURY = "Mercury orbits the Sun every 88 days, faster than any other planet."
VENUS = "Venus turns backwards: on Venus the Sun rises in the west."
SECRET = "Mercury secrets: the orbit of Mercury is the stranger's private note."


async def stored_sources(db: ChatDatabase, message_id: object) -> list[tuple[int, str]]:
    async with db.sessionmaker() as session:
        rows = await session.scalars(
            select(MessageSource)
            .where(MessageSource.message_id == message_id)
            .order_by(MessageSource.index)
        )
        return [(row.index, row.title) for row in rows]


async def test_sources_are_retrieved_from_what_the_asker_may_read_and_stored(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer, stranger = await db.user("viewer"), await db.user("stranger")
        await db.document(viewer, "Mercury", MERCURY)
        await db.document(viewer, "Venus", VENUS)
        await db.document(stranger, "Private", SECRET)
        exchange = await db.exchange(
            viewer, await db.conversation(viewer), "How long is the orbit of Mercury?"
        )
        retriever = db.retriever()

        prepared = await prepare_answer(db.sessionmaker, retriever, db.settings, viewer, exchange)

        titles = [source.title for source in prepared.sources]
        assert titles[0] == "Mercury"
        assert sorted(titles) == ["Mercury", "Venus"]
        assert [s.index for s in prepared.sources] == [1, 2]
        assert await stored_sources(db, exchange.answer.id) == [(1, "Mercury"), (2, "Venus")]
        assert prepared.request.passages[0].content == MERCURY
        [system, user] = prepared.request.messages
        assert system.role == "system"
        assert '<source index="1" title="Mercury">' in user.content
        assert user.content.endswith("Question: How long is the orbit of Mercury?")
        assert "private note" not in user.content
        assert prepared.prompt_tokens == sum(
            estimate_tokens(m.content) for m in prepared.request.messages
        )


async def test_sources_past_the_budget_are_left_out_of_the_prompt_and_the_answer(
    database_url: str, tmp_path: Path
) -> None:
    budget = estimate_tokens(MERCURY) + SOURCE_OVERHEAD_TOKENS
    async with chat_database(database_url, tmp_path, chat_sources_budget_tokens=budget) as db:
        viewer = await db.user()
        await db.document(viewer, "Mercury", MERCURY)
        await db.document(viewer, "Venus", VENUS)
        exchange = await db.exchange(viewer, await db.conversation(viewer), "Mercury orbit?")
        retriever = db.retriever()

        prepared = await prepare_answer(db.sessionmaker, retriever, db.settings, viewer, exchange)

        assert [s.title for s in prepared.sources] == ["Mercury"]
        assert await stored_sources(db, exchange.answer.id) == [(1, "Mercury")]
        assert "Venus" not in prepared.request.messages[-1].content


async def test_earlier_turns_of_the_conversation_are_in_the_prompt(
    database_url: str, tmp_path: Path
) -> None:
    async with chat_database(database_url, tmp_path) as db:
        viewer = await db.user()
        conversation_id = await db.conversation(viewer)
        first = await db.exchange(viewer, conversation_id, "Remember the number 42.")
        async with db.sessionmaker.begin() as session:
            row = await session.get(Message, first.answer.id)
            assert row is not None
            row.status, row.content = MessageStatus.COMPLETE, "Noted: 42."
        second = await db.exchange(viewer, conversation_id, "Which number?")
        retriever = db.retriever()

        prepared = await prepare_answer(db.sessionmaker, retriever, db.settings, viewer, second)

        roles = [(m.role, m.content) for m in prepared.request.messages[1:-1]]
        assert roles == [("user", "Remember the number 42."), ("assistant", "Noted: 42.")]
        assert prepared.sources == ()


async def test_a_retrieval_failure_is_reported_and_stores_no_sources(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_database(database_url, tmp_path, chat_stub, openai_max_retries=0) as db:
        viewer = await db.user()
        await db.document(viewer, "Mercury", MERCURY)
        exchange = await db.exchange(viewer, await db.conversation(viewer), "Mercury?")
        # the query is embedded by the provider, which fails
        embedder = OpenAIEmbedder(openai_client(db.settings), model="m", dimensions=384)
        chat_stub.fail(EMBEDDINGS, times=1, status=500)
        try:
            with pytest.raises(RetrievalFailed) as failed:
                await prepare_answer(
                    db.sessionmaker, db.retriever(embedder), db.settings, viewer, exchange
                )
        finally:
            await embedder.aclose()

        assert "HTTP 500" in str(failed.value.__cause__)
        assert await stored_sources(db, exchange.answer.id) == []
