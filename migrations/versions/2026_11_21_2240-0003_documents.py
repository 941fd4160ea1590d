"""documents: knowledge base tables, chunk vectors and full text, the job queue schema

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-21 22:40:00
"""

import os
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op
from pgvector.sqlalchemy import Vector
from procrastinate.schema import SchemaManager
from sqlalchemy.dialects import postgresql
from sqlalchemy.util import await_only

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_DIMENSIONS = 384


def _dimensions() -> int:
    """The embedding size at migration time; `ragstream reindex` changes it later."""
    configured = context.config.attributes.get("embedding_dimensions")
    if configured is None:
        configured = os.environ.get("RAGSTREAM_EMBEDDING_DIMENSIONS") or DEFAULT_DIMENSIONS
    return int(configured)


def _install_job_queue() -> None:
    """procrastinate's own schema script, as shipped with the installed version.

    The script holds PL/pgSQL bodies, so it runs through the driver's simple-query protocol
    (several statements in one call) inside the migration's transaction.
    """
    bind = op.get_bind()
    installed = bind.execute(sa.text("SELECT to_regclass('procrastinate_jobs') IS NOT NULL"))
    if installed.scalar():
        return
    driver = bind.connection.driver_connection
    assert driver is not None
    await_only(driver.execute(SchemaManager.get_schema()))


def upgrade() -> None:
    dimensions = _dimensions()
    _install_job_queue()
    op.create_table(
        "documents",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("mime_type", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_sha256", sa.String(64), nullable=False),
        sa.Column("visibility", sa.String(16), server_default="PRIVATE", nullable=False),
        sa.Column("status", sa.String(16), server_default="PENDING", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "status IN ('PENDING', 'PROCESSING', 'READY', 'FAILED')", name="ck_documents_status"
        ),
        sa.CheckConstraint("visibility IN ('PRIVATE', 'SHARED')", name="ck_documents_visibility"),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_documents_owner_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
        sa.UniqueConstraint(
            "owner_id", "content_sha256", name="uq_documents_owner_id_content_sha256"
        ),
    )
    op.create_index(
        "ix_documents_owner_id_created_at_id", "documents", ["owner_id", "created_at", "id"]
    )
    op.create_index("ix_documents_created_at_id", "documents", ["created_at", "id"])
    op.create_index(
        "ix_documents_unfinished",
        "documents",
        ["status"],
        postgresql_where=sa.text("status IN ('PENDING', 'PROCESSING')"),
    )
    op.create_table(
        "document_contents",
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="fk_document_contents_document_id_documents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("document_id", name="pk_document_contents"),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("document_id", sa.Uuid(), nullable=False),
        sa.Column("ordinal", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("heading_path", postgresql.ARRAY(sa.Text()), server_default="{}", nullable=False),
        sa.Column("heading", sa.Text(), server_default="", nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("token_count", sa.Integer(), nullable=False),
        sa.Column("embedding", Vector(dimensions), nullable=True),
        sa.Column(
            "tsv",
            postgresql.TSVECTOR(),
            sa.Computed(
                "setweight(to_tsvector('english'::regconfig, heading), 'A') || "
                "setweight(to_tsvector('english'::regconfig, content), 'B')",
                persisted=True,
            ),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["document_id"],
            ["documents.id"],
            name="fk_chunks_document_id_documents",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_chunks"),
        sa.UniqueConstraint("document_id", "ordinal", name="uq_chunks_document_id_ordinal"),
    )
    op.create_index(
        "ix_chunks_embedding_hnsw",
        "chunks",
        ["embedding"],
        postgresql_using="hnsw",
        postgresql_ops={"embedding": "vector_cosine_ops"},
    )
    op.create_index("ix_chunks_tsv", "chunks", ["tsv"], postgresql_using="gin")


def downgrade() -> None:
    # The job queue's tables stay: other deployments' workers may still be attached to them.
    op.drop_table("chunks")
    op.drop_table("document_contents")
    op.drop_table("documents")
