"""search trigram indexes: the lists' `search` filters without a full scan

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 01:00:00

The evaluation, document and user lists filter with ``column ILIKE '%term%'`` (the term's LIKE
wildcards escaped). A leading wildcard rules out a b-tree, so without these every search read the
whole table; GIN trigram indexes answer ILIKE for terms of three or more characters (shorter
terms have no trigram to look up and still scan, which is cheap next to reading the rows they
match). One index per searched column: the OR of two columns becomes a BitmapOr of two scans.

The indexes are built without GIN's pending list (fastupdate off). With it, new rows wait in an
unsorted list until a vacuum merges them: every search reads that whole list, and the planner,
pricing it in, keeps choosing a sequential scan after a bulk import until autovacuum has run.
These columns are written rarely (status and content updates leave them alone), so adding each
row's trigrams at write time costs little.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (index, table, column)
INDEXES = (
    ("ix_evaluations_title_trgm", "evaluations", "title"),
    ("ix_evaluations_company_name_trgm", "evaluations", "company_name"),
    ("ix_documents_title_trgm", "documents", "title"),
    ("ix_documents_filename_trgm", "documents", "filename"),
    ("ix_users_email_trgm", "users", "email"),
    ("ix_users_display_name_trgm", "users", "display_name"),
)


def upgrade() -> None:
    # pg_trgm ships with PostgreSQL (contrib) and is a trusted extension: an owner of the
    # database may create it without superuser rights.
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    # Built inside the migration's transaction, which blocks writes to each table while its
    # index builds: seconds at hundreds of thousands of rows, and migrations run before serving.
    for name, table, column in INDEXES:
        op.create_index(
            name,
            table,
            [column],
            postgresql_using="gin",
            postgresql_ops={column: "gin_trgm_ops"},
            postgresql_with={"fastupdate": "off"},
        )


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
    # pg_trgm stays: the upgrade may have found it installed already, and other objects in
    # the database may depend on it; dropping it is the database owner's decision.
