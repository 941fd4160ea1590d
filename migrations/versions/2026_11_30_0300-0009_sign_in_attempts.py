"""sign-in attempts: the sign-in limits, shared by every server process

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 02:00:00

The sign-in and sign-up limits used to count attempts in each process's memory, so N
processes allowed N times the limit. Each attempt is now a row, counted per limit and key
within its window under a per-key lock; rows past their window are deleted as they are met.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sign_in_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), nullable=False),
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sign_in_attempts"),
    )
    op.create_index("ix_sign_in_attempts_scope_key_at", "sign_in_attempts", ["scope", "key", "at"])


def downgrade() -> None:
    op.drop_table("sign_in_attempts")
