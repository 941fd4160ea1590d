"""The lists' `search` filter: a case-insensitive substring of any of a few text columns.

``column ILIKE '%term%'`` with the term's LIKE wildcards escaped, so ``%`` and ``_`` match
themselves. Each searched column has a GIN trigram index (migration 0005), which answers it for
terms of three or more letters or digits in a row.

Search statements are planned for their actual term. asyncpg prepares every statement, and
after five executions PostgreSQL may switch a prepared statement to a generic plan made without
knowing the term, which is wrong for whole classes of terms: the generic count scans both
trigram indexes even for a one- or two-character term, which has no trigram to look up, so the
scan returns every row for a recheck (about four times slower than the sequential scan a custom
plan picks, at 50,000 evaluations); the generic page walks the list in date order and filters,
which for a rare term reads most of the table to find twenty rows. Planning each search costs
about a millisecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, or_, text
from sqlalchemy.ext.asyncio import AsyncSession


def escape_like(term: str) -> str:
    """``term`` for a LIKE pattern in which every character matches itself (escape: ``\\``)."""
    return term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains(columns: Sequence[Any], term: str) -> ColumnElement[bool]:
    """Any of ``columns`` contains ``term``, ignoring case."""
    pattern = f"%{escape_like(term)}%"
    return or_(*(column.ilike(pattern) for column in columns))


async def plan_for_the_term(session: AsyncSession) -> None:
    """Custom plans for the rest of the transaction (see the module docstring)."""
    await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))
