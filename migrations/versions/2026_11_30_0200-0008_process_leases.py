"""process leases: which server process generates each running answer

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 01:00:00

Several `ragstream serve` processes may share one database. Each registers itself in
`server_processes` and renews a lease there while it runs; each answer it starts records it in
`messages.generator_id`. A process interrupts another's running answers only once that lease
has expired, so a process that starts never interrupts a live one's answers.

Answers left STREAMING before this revision have no generator and count as orphaned: the first
process that starts interrupts them, as start-up did before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "server_processes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_server_processes"),
    )
    op.add_column("messages", sa.Column("generator_id", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "generator_id")
    op.drop_table("server_processes")
