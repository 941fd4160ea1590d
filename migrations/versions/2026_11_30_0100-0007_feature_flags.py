"""feature flags, their audit trail, and the model in the usage ledger

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 01:00:00

`feature_flags` holds one row per environment, key and target (a user, an evaluation, a role,
or global); `feature_flag_changes` records every change with its author and the flag's state
before and after, and outlives the flags it describes.

`usage_daily` gains the model that answered, so usage can be reported per model; rows counted
before this version keep the empty model ('' = not recorded). The downgrade folds the models of
a user and day back into one row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPE_TARGET = (
    "(scope = 'USER' AND user_id IS NOT NULL AND evaluation_id IS NULL AND role IS NULL)"
    " OR (scope = 'EVALUATION' AND evaluation_id IS NOT NULL AND user_id IS NULL"
    " AND role IS NULL)"
    " OR (scope = 'ROLE' AND role IS NOT NULL AND user_id IS NULL AND evaluation_id IS NULL)"
    " OR (scope = 'GLOBAL' AND user_id IS NULL AND evaluation_id IS NULL AND role IS NULL)"
)


def upgrade() -> None:
    op.create_table(
        "feature_flags",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("environment", sa.String(32), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("evaluation_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("updated_by_id", sa.Uuid(), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("key IN ('chat', 'uploads', 'search')", name="ck_feature_flags_key"),
        sa.CheckConstraint(
            "scope IN ('USER', 'EVALUATION', 'ROLE', 'GLOBAL')", name="ck_feature_flags_scope"
        ),
        sa.CheckConstraint(
            "role IS NULL OR role IN ('USER', 'ADMIN')", name="ck_feature_flags_role"
        ),
        sa.CheckConstraint(SCOPE_TARGET, name="ck_feature_flags_scope_target"),
        sa.CheckConstraint(
            "jsonb_typeof(metadata) = 'object'", name="ck_feature_flags_metadata_is_object"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_feature_flags_user_id_users", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["evaluation_id"],
            ["evaluations.id"],
            name="fk_feature_flags_evaluation_id_evaluations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["updated_by_id"],
            ["users.id"],
            name="fk_feature_flags_updated_by_id_users",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feature_flags"),
        sa.UniqueConstraint(
            "environment",
            "key",
            "scope",
            "user_id",
            "evaluation_id",
            "role",
            name="uq_feature_flags_target",
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(
        "ix_feature_flags_user_id",
        "feature_flags",
        ["user_id"],
        postgresql_where=sa.text("user_id IS NOT NULL"),
    )
    op.create_index(
        "ix_feature_flags_evaluation_id",
        "feature_flags",
        ["evaluation_id"],
        postgresql_where=sa.text("evaluation_id IS NOT NULL"),
    )
    op.create_index(
        "ix_feature_flags_scope_role",
        "feature_flags",
        ["scope", "role"],
        postgresql_where=sa.text("scope IN ('ROLE', 'GLOBAL')"),
    )
    op.create_index(
        "ix_feature_flags_key_created_at_id", "feature_flags", ["key", "created_at", "id"]
    )

    op.create_table(
        "feature_flag_changes",
        sa.Column("id", sa.Uuid(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("flag_id", sa.Uuid(), nullable=False),
        sa.Column("environment", sa.String(32), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("evaluation_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("before", postgresql.JSONB(), nullable=True),
        sa.Column("after", postgresql.JSONB(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.clock_timestamp(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "action IN ('CREATED', 'UPDATED', 'DELETED')", name="ck_feature_flag_changes_action"
        ),
        sa.ForeignKeyConstraint(
            ["actor_id"],
            ["users.id"],
            name="fk_feature_flag_changes_actor_id_users",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_feature_flag_changes"),
    )
    op.create_index(
        "ix_feature_flag_changes_created_at_id", "feature_flag_changes", ["created_at", "id"]
    )
    op.create_index("ix_feature_flag_changes_flag_id", "feature_flag_changes", ["flag_id"])

    op.add_column(
        "usage_daily", sa.Column("model", sa.String(200), server_default="", nullable=False)
    )
    op.drop_constraint("pk_usage_daily", "usage_daily", type_="primary")
    op.create_primary_key("pk_usage_daily", "usage_daily", ["user_id", "day", "model"])


def downgrade() -> None:
    op.execute(
        """
        CREATE TEMPORARY TABLE usage_folded ON COMMIT DROP AS
        SELECT user_id, day, sum(questions) AS questions, sum(answers) AS answers,
               sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens
        FROM usage_daily GROUP BY user_id, day
        """
    )
    op.execute("DELETE FROM usage_daily")
    op.drop_constraint("pk_usage_daily", "usage_daily", type_="primary")
    op.drop_column("usage_daily", "model")
    op.create_primary_key("pk_usage_daily", "usage_daily", ["user_id", "day"])
    op.execute(
        """
        INSERT INTO usage_daily (user_id, day, questions, answers, prompt_tokens, completion_tokens)
        SELECT user_id, day, questions, answers, prompt_tokens, completion_tokens FROM usage_folded
        """
    )
    op.drop_table("feature_flag_changes")
    op.drop_table("feature_flags")
