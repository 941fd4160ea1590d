"""chat: conversations, messages and the sources each answer cites

Revision ID: 0004
Revises: 0002 (evaluations), 0003 (documents, chunks)
Create Date: 2026-11-21 22:50:00

A merge of the two branches rather than "revises 0001, depends on 0002 and 0003": alembic counts
dependencies as merge parents when it records the applied heads, and with two of them (both
heads at that point) its version bookkeeping fails (KeyError on '0001') on a fresh database.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = ("0002", "0003")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps(created_default: str = "now()") -> list[sa.Column[object]]:
    return [
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text(created_default),
            nullable=False,
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("evaluation_id", sa.Uuid(), nullable=True),
        sa.Column("title", sa.String(200), nullable=False),
        *_timestamps(),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_conversations_owner_id_users", ondelete="CASCADE"
        ),
        # Deleting an evaluation keeps its conversations; they only lose the context.
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluations.id"],
            name="fk_conversations_evaluation_id_evaluations",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_conversations"),
    )
    op.create_index(
        "ix_conversations_owner_id_created_at_id",
        "conversations",
        ["owner_id", "created_at", "id"],
    )
    op.create_index("ix_conversations_evaluation_id", "conversations", ["evaluation_id"])

    op.create_table(
        "messages",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("conversation_id", sa.Uuid(), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), server_default="", nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        # clock_timestamp: a question and its answer, written in one transaction, still sort.
        *_timestamps("clock_timestamp()"),
        sa.CheckConstraint("role IN ('USER', 'ASSISTANT')", name="ck_messages_role"),
        sa.CheckConstraint(
            "status IN ('STREAMING', 'COMPLETE', 'CANCELLED', 'FAILED', 'INTERRUPTED')",
            name="ck_messages_status",
        ),
        sa.ForeignKeyConstraint(
            ["conversation_id"],
            ["conversations.id"],
            name="fk_messages_conversation_id_conversations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_messages_owner_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index(
        "ix_messages_conversation_id_created_at_id",
        "messages",
        ["conversation_id", "created_at", "id"],
    )
    op.create_index(
        "ix_messages_owner_id_role_created_at", "messages", ["owner_id", "role", "created_at"]
    )
    op.create_index(
        "ix_messages_owner_id_streaming",
        "messages",
        ["owner_id"],
        postgresql_where=sa.text("status = 'STREAMING'"),
    )

    op.create_table(
        "message_sources",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("message_id", sa.Uuid(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=True),
        sa.Column("chunk_id", sa.Uuid(), nullable=True),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name="fk_message_sources_message_id_messages",
            ondelete="CASCADE",
        ),
        # Deleting a document or re-chunking it must not delete chat history: the reference
        # is cleared and the stored title and excerpt remain.
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="fk_message_sources_document_id_documents",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["chunk_id"],
            ["chunks.id"],
            name="fk_message_sources_chunk_id_chunks",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_message_sources"),
        sa.UniqueConstraint("message_id", "index", name="uq_message_sources_message_id"),
    )
    # ON DELETE SET NULL looks rows up by the referenced id.
    op.create_index("ix_message_sources_document_id", "message_sources", ["document_id"])
    op.create_index("ix_message_sources_chunk_id", "message_sources", ["chunk_id"])


def downgrade() -> None:
    op.drop_table("message_sources")
    op.drop_table("messages")
    op.drop_table("conversations")
