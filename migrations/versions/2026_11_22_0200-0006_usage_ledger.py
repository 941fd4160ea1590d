"""usage ledger: questions, answers and tokens per account and UTC day

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 02:00:00

The daily quota and `User.usage` used to be counted from `messages`, which deleting a
conversation cascades away: a user could reset the quota, and shrink the token totals, by
deleting conversations. `usage_daily` is written next to the messages and left alone when they
go; only deleting the account removes its rows.

Backfilled from the messages that exist, each counted on the UTC day it was written, so a
deployment keeps today's count and its totals across the upgrade. What was deleted before it
is gone and is not recovered. The downgrade drops the table; the messages are untouched.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("questions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("answers", sa.Integer(), server_default="0", nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_usage_daily_user_id_users", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "day", name="pk_usage_daily"),
    )
    op.execute(
        """
        INSERT INTO usage_daily (user_id, day, questions, answers, prompt_tokens, completion_tokens)
        SELECT owner_id,
               (created_at AT TIME ZONE 'UTC')::date,
               count(*) FILTER (WHERE role = 'USER'),
               count(*) FILTER (WHERE role = 'ASSISTANT'),
               coalesce(sum(prompt_tokens) FILTER (WHERE role = 'ASSISTANT'), 0),
               coalesce(sum(completion_tokens) FILTER (WHERE role = 'ASSISTANT'), 0)
        FROM messages
        GROUP BY 1, 2
        """
    )


def downgrade() -> None:
    op.drop_table("usage_daily")
