"""Conversations, their messages, the sources an answer cites, and the usage ledger."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ragstream.db.base import Base, StrEnumType, Timestamps, UUIDPrimaryKey, one_of
from ragstream.domain.chat.enums import FailureCode, MessageRole, MessageStatus


class Conversation(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_owner_id_created_at_id", "owner_id", "created_at", "id"),
        Index("ix_conversations_evaluation_id", "evaluation_id"),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    # Deleting the evaluation keeps the conversation; it just loses its context.
    evaluation_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("evaluations.id", ondelete="SET NULL")
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False)


class Message(UUIDPrimaryKey, Timestamps, Base):
    """One turn. Assistant messages are written while they stream (status STREAMING)."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint(one_of("role", MessageRole), name="role"),
        CheckConstraint(one_of("status", MessageStatus), name="status"),
        Index("ix_messages_conversation_id_created_at_id", "conversation_id", "created_at", "id"),
        # A user's messages by role and time. The quota and usage figures no longer read them
        # (they read `usage_daily`, which deleting a conversation leaves alone).
        Index("ix_messages_owner_id_role_created_at", "owner_id", "role", "created_at"),
        # Start-up recovery and the concurrency cap look only at running generations.
        Index(
            "ix_messages_owner_id_streaming",
            "owner_id",
            postgresql_where=text("status = 'STREAMING'"),
        ),
    )

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), nullable=False
    )
    # Denormalised from the conversation so per-user reads need no join.
    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[MessageRole] = mapped_column(StrEnumType(MessageRole, 16), nullable=False)
    # clock_timestamp, not now(): a question and its answer are written in one transaction and
    # must still sort in the order they were written.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.clock_timestamp(), nullable=False
    )
    content: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    status: Mapped[MessageStatus] = mapped_column(StrEnumType(MessageStatus, 16), nullable=False)
    model: Mapped[str | None] = mapped_column(String(200))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    # Set with FAILED / INTERRUPTED: a stable code, never provider text.
    error_code: Mapped[FailureCode | None] = mapped_column(StrEnumType(FailureCode, 64))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The server process generating the answer (`server_processes.id`); no foreign key, as the
    # process's row goes when its lease has expired and its answers were interrupted.
    generator_id: Mapped[uuid.UUID | None] = mapped_column()
    # A stop asked for by another process (CANCELLED): the generator reads it with each write
    # of the text, should the broker's request not reach it. Loaded only where asked for.
    stop_requested: Mapped[str | None] = mapped_column(String(32), deferred=True)


class ServerProcess(Base):
    """A running `ragstream serve` process and the lease it renews while it lives.

    Its running answers (`Message.generator_id`) are its own until the lease expires; then any
    other process interrupts them (`ProcessRepository.interrupt_orphans`).
    """

    __tablename__ = "server_processes"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    lease_expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class MessageSource(UUIDPrimaryKey, Base):
    """A numbered source `[index]` of an assistant message.

    Title and excerpt are kept with the message, so deleting a document (which nulls the
    references) does not rewrite chat history.
    """

    __tablename__ = "message_sources"
    __table_args__ = (
        UniqueConstraint("message_id", "index", name="uq_message_sources_message_id"),
        Index("ix_message_sources_document_id", "document_id"),
        Index("ix_message_sources_chunk_id", "chunk_id"),
    )

    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    index: Mapped[int] = mapped_column(Integer, nullable=False)
    document_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("documents.id", ondelete="SET NULL")
    )
    chunk_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("chunks.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(500), nullable=False)
    excerpt: Mapped[str] = mapped_column(Text, nullable=False)
    page: Mapped[int | None] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )


class UsageDaily(Base):
    __tablename__ = "usage_daily"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    # The model that answered ('' for answers counted before the ledger kept the model).
    model: Mapped[str] = mapped_column(String(200), primary_key=True, server_default="")
    questions: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # Answers started (as the questions are); their tokens are added once each answer ends.
    answers: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
