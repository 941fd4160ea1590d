"""Evaluations: a user's structured assessment of an ERP project, with weighted criteria."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import CheckConstraint, Double, ForeignKey, Index, String, Text, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, query_expression

from ragstream.db.base import Base, StrEnumType, Timestamps, UUIDPrimaryKey, one_of
from ragstream.domain.evaluations.enums import EvaluationStatus, ProjectType


class Evaluation(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "evaluations"
    __table_args__ = (
        CheckConstraint(one_of("project_type", ProjectType), name="project_type"),
        CheckConstraint(one_of("status", EvaluationStatus), name="status"),
        CheckConstraint("overall_score BETWEEN 0 AND 5", name="overall_score"),
        CheckConstraint("jsonb_typeof(criteria) = 'array'", name="criteria_is_array"),
        # An owner's list in its default order, User.evaluations, and per-owner counts.
        Index("ix_evaluations_owner_id_created_at_id", "owner_id", "created_at", "id"),
        Index("ix_evaluations_owner_id_updated_at_id", "owner_id", "updated_at", "id"),
        # The admin's all-owners list in its default order.
        Index("ix_evaluations_created_at_id", "created_at", "id"),
        # TITLE and OVERALL_SCORE orders sort one owner's rows in memory: a person's evaluations
        # number in the hundreds at most, so more indexes would cost every write for little.
        # The list's `search` filter (ILIKE '%term%'), without a pending list:
        # see migration 0005.
        Index(
            "ix_evaluations_title_trgm",
            "title",
            postgresql_using="gin",
            postgresql_ops={"title": "gin_trgm_ops"},
            postgresql_with={"fastupdate": "off"},
        ),
        Index(
            "ix_evaluations_company_name_trgm",
            "company_name",
            postgresql_using="gin",
            postgresql_ops={"company_name": "gin_trgm_ops"},
            postgresql_with={"fastupdate": "off"},
        ),
    )
    # Server-generated values (created_at on insert, updated_at on update) come back through
    # RETURNING in the same statement, so no attribute is left expired for a lazy load.
    __mapper_args__ = {"eager_defaults": True}

    owner_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    title: Mapped[str] = mapped_column(String(200), nullable=False)
    company_name: Mapped[str] = mapped_column(String(200), nullable=False)
    project_type: Mapped[ProjectType] = mapped_column(StrEnumType(ProjectType, 32), nullable=False)
    status: Mapped[EvaluationStatus] = mapped_column(
        StrEnumType(EvaluationStatus, 32),
        nullable=False,
        server_default=EvaluationStatus.DRAFT.value,
    )
    notes: Mapped[str | None] = mapped_column(Text)
    # Criteria live in the evaluation row as a JSONB array of {name, weight, score, notes}
    # rather than in a child table: they are always read with their evaluation, always replaced
    # as a whole (never edited one by one), capped at 50 and never queried on their own. One row
    # means one read per evaluation (no nested N+1), an atomic replacement and no orphan rows.
    criteria: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    # Kept by the domain whenever criteria change (weighted mean of the scored criteria, NULL
    # when none is scored), so ORDER BY overall_score and keyset pagination can use a column.
    overall_score: Mapped[float | None] = mapped_column(Double)
    # Not a column: the sort key of the list query that loaded the row (set with
    # ``with_expression``), read back to build keyset cursors exactly as PostgreSQL compares them.
    sort_key: Mapped[Any] = query_expression()
