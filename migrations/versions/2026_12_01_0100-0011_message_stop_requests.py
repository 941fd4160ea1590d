"""messages.stop_requested: a request to stop a running answer, kept where its owner looks

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 01:00:00

`cancelGeneration` on a process that does not generate the answer asks the owner through the
event broker. When that request cannot get through (Redis unreachable, or a message lost), the
owner still sees it here: each write of the running answers' text returns the requests made
meanwhile. A nullable column without a default: adding it rewrites nothing.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("stop_requested", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("messages", "stop_requested")
