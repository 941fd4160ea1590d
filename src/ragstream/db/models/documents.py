"""The knowledge base: documents, their original bytes, and the chunks retrieval searches."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Computed,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ragstream.db.base import Base, StrEnumType, Timestamps, UUIDPrimaryKey, one_of
from ragstream.domain.documents.enums import DocumentStatus, Visibility

if TYPE_CHECKING:
    from ragstream.db.models.users import User

# The full-text configuration is part of the generated column; changing it needs a migration.
TEXT_SEARCH_CONFIG = "english"


class Document(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "documents"
    __table_args__ = (
        CheckConstraint(one_of("status", DocumentStatus), name="status"),
        CheckConstraint(one_of("visibility", Visibility), name="visibility"),
        UniqueConstraint("owner_id", "content_sha256", name="uq_documents_owner_id_content_sha256"),
        Index("ix_documents_owner_id_created_at_id", "owner_id", "created_at", "id"),
        Index("ix_documents_created_at_id", "created_at", "id"),
        Index(
            "ix_documents_unfinished",
            "status",
            postgresql_where=text("status IN ('PENDING', 'PROCESSING')"),
        ),
        # The list's `search` filter (ILIKE '%term%'), without a pending list:
        # see migration 0005.
        Index(
            "ix_documents_title_trgm",
            "title",
            postgresql_using="gin",
            postgresql_ops={"title": "gin_trgm_ops"},
            postgresql_with={"fastupdate": "off"},
        ),
        Index(
            "ix_documents_filename_trgm",
            "filename",
            postgresql_using="gin",
            postgresql_ops={"filename": "gin_trgm_ops"},
            postgresql_with={"fastupdate": "off"},
        ),
    )
    # The INSERT and every UPDATE bring back what the database computed (``updated_at``) with
    # RETURNING, instead of a SELECT after them: status events carry the fresh value.
    __mapper_args__ = {"eager_defaults": True}

    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    mime_type: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    content_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    visibility: Mapped[Visibility] = mapped_column(
        StrEnumType(Visibility, 16), nullable=False, server_default=Visibility.PRIVATE.value
    )
    status: Mapped[DocumentStatus] = mapped_column(
        StrEnumType(DocumentStatus, 16), nullable=False, server_default=DocumentStatus.PENDING.value
    )
    error: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")

    # Loaded explicitly (selectinload) wherever a document is mapped for the API.
    owner: Mapped[User] = relationship(lazy="raise")


class DocumentContent(Base):
    """The uploaded bytes, kept apart so listing documents never drags them along."""

    __tablename__ = "document_contents"

    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Chunk(UUIDPrimaryKey, Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal", name="uq_chunks_document_id_ordinal"),
        Index(
            "ix_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
        Index("ix_chunks_tsv", "tsv", postgresql_using="gin"),
    )

    document_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("documents.id", ondelete="CASCADE"), nullable=False
    )
    ordinal: Mapped[int] = mapped_column(Integer, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    heading_path: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default="{}"
    )
    # heading_path joined: generated columns only accept immutable expressions.
    heading: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    page: Mapped[int | None] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer, nullable=False)
    # The dimension lives in the database (set by the migration, changed by `ragstream reindex`).
    embedding: Mapped[list[float] | None] = mapped_column(Vector())
    tsv: Mapped[str] = mapped_column(
        TSVECTOR,
        Computed(
            f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, heading), 'A') || "
            f"setweight(to_tsvector('{TEXT_SEARCH_CONFIG}'::regconfig, content), 'B')",
            persisted=True,
        ),
    )
