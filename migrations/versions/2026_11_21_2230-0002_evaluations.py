"""evaluations: owner-scoped assessments with weighted criteria

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 22:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("owner_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("company_name", sa.String(200), nullable=False),
        sa.Column("project_type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), server_default="DRAFT", nullable=False),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column(
            "criteria",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("overall_score", sa.Double(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "project_type IN ('NEW_ERP', 'ERP_MIGRATION', 'ERP_UPGRADE', 'OTHER')",
            name="ck_evaluations_project_type",
        ),
        sa.CheckConstraint(
            "status IN ('DRAFT', 'IN_PROGRESS', 'COMPLETED', 'ARCHIVED')",
            name="ck_evaluations_status",
        ),
        sa.CheckConstraint("overall_score BETWEEN 0 AND 5", name="ck_evaluations_overall_score"),
        sa.CheckConstraint(
            "jsonb_typeof(criteria) = 'array'", name="ck_evaluations_criteria_is_array"
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name="fk_evaluations_owner_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
    )
    op.create_index(
        "ix_evaluations_owner_id_created_at_id", "evaluations", ["owner_id", "created_at", "id"]
    )
    op.create_index(
        "ix_evaluations_owner_id_updated_at_id", "evaluations", ["owner_id", "updated_at", "id"]
    )
    op.create_index("ix_evaluations_created_at_id", "evaluations", ["created_at", "id"])


def downgrade() -> None:
    op.drop_table("evaluations")
