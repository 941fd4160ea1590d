"""The parts of chat generation on their own: a database with accounts, conversations and
documents written directly, and the collaborators an answer works with."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.engine import make_engine, make_sessionmaker
from ragstream.db.models.chat import Conversation, Message
from ragstream.db.models.documents import Chunk, Document
from ragstream.db.models.users import User
from ragstream.domain.chat.admission import store_exchange
from ragstream.domain.chat.answer import Collaborators
from ragstream.domain.chat.flusher import Flusher
from ragstream.domain.chat.preparation import Retriever, knowledge_base_retriever
from ragstream.domain.chat.service import NewExchange
from ragstream.domain.flags.features import AccountFlags, defaults_from_settings
from ragstream.domain.llm.embeddings import Embedder, HashingEmbedder
from ragstream.domain.llm.openai_chat import OpenAIChatProvider
from ragstream.domain.retrieval.service import SearchTuning
from ragstream.settings import Settings
from tests.chat_stub import ChatStub
from tests.chat_support import openai_settings
from tests.conftest import make_settings


@dataclass
class ChatDatabase:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    embedder: Embedder
    # The server process the exchanges name as their generator (none holds a lease).
    process_id: uuid.UUID = dataclasses.field(default_factory=uuid.uuid4)

    async def user(self, name: str = "asker") -> User:
        async with self.sessionmaker.begin() as session:
            email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
            user = User(email=email, display_name=name, password_hash="-")  # never signs in
            session.add(user)
            await session.flush()
            await session.refresh(user)
        return user

    async def conversation(self, owner: User) -> uuid.UUID:
        async with self.sessionmaker.begin() as session:
            conversation = Conversation(owner_id=owner.id, title="Chat")
            session.add(conversation)
            await session.flush()
            return conversation.id

    async def document(self, owner: User, title: str, *passages: str) -> uuid.UUID:
        """A ready document of the owner, one embedded chunk per passage."""
        vectors = await self.embedder.embed(list(passages))
        async with self.sessionmaker.begin() as session:
            document = Document(
                owner_id=owner.id,
                title=title,
                filename=f"{title}.txt",
                mime_type="text/plain",
                size_bytes=sum(len(p) for p in passages),
                content_sha256=uuid.uuid4().hex,
                status="READY",
                chunk_count=len(passages),
            )
            session.add(document)
            await session.flush()
            session.add_all(
                Chunk(
                    document_id=document.id,
                    ordinal=n,
                    content=passage,
                    token_count=len(passage.split()),
                    embedding=vector,
                )
                for n, (passage, vector) in enumerate(zip(passages, vectors, strict=True))
            )
            return document.id

    async def exchange(
        self, viewer: User, conversation_id: uuid.UUID, content: str = "What is in the notes?"
    ) -> NewExchange:
        # No flags: the chat feature is the settings' default, answered by "stub-model".
        defaults = defaults_from_settings(self.settings, chat_model="stub-model")
        return await store_exchange(
            self.sessionmaker,
            self.settings,
            viewer,
            flags=AccountFlags(role=viewer.role, raw=None, defaults=defaults),
            answer_id=uuid.uuid4(),
            conversation_id=conversation_id,
            content=content,
            model_for=lambda model: model,
            generator_id=self.process_id,
        )

    async def message(self, message_id: uuid.UUID) -> Message | None:
        async with self.sessionmaker() as session:
            return await session.get(Message, message_id)

    async def count(self, table: str) -> int:
        async with self.sessionmaker() as session:
            value = await session.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
        return int(value or 0)

    def retriever(self, embedder: Embedder | None = None) -> Retriever:
        tuning = SearchTuning.from_settings(self.settings)
        return knowledge_base_retriever(embedder or self.embedder, tuning)

    def collaborators(self) -> Collaborators:
        """What an answer works with; the provider is the real client of the chat stub
        (`chat_database` given the stub)."""
        return Collaborators(
            sessionmaker=self.sessionmaker,
            settings=self.settings,
            provider=OpenAIChatProvider.from_settings(self.settings),
            retriever=self.retriever(),
            flusher=Flusher(self.sessionmaker, self.settings.chat_flush_interval_ms / 1000),
            lanes=asyncio.Semaphore(self.settings.chat_database_connections),
        )


@contextlib.asynccontextmanager
async def chat_database(
    database_url: str, tmp_path: Path, stub: ChatStub | None = None, **overrides: object
) -> AsyncIterator[ChatDatabase]:
    values = overrides
    if stub is not None:  # the chat provider is the real client against the stub
        values = openai_settings(database_url, tmp_path, stub, **overrides)
    settings = make_settings(database_url, tmp_path, **values)
    engine = make_engine(database_url, settings)
    try:
        yield ChatDatabase(
            settings, make_sessionmaker(engine), HashingEmbedder(settings.embedding_dimensions)
        )
    finally:
        await engine.dispose()
