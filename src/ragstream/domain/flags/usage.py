"""Usage analytics for admins, over the chat usage ledger (questions, answers, tokens)."""

from __future__ import annotations

from datetime import date

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models import User
from ragstream.db.repositories.chat import UsageRepository, UsageRow
from ragstream.domain.errors import InvalidInput
from ragstream.domain.flags.enums import UsageGroupBy
from ragstream.domain.users.service import require_admin

MAX_REPORT_DAYS = 400
MAX_REPORT_ROWS = 1_000


async def usage_report(
    session: AsyncSession,
    viewer: User,
    *,
    start: date,
    end: date,
    group: UsageGroupBy,
    limit: int,
) -> list[UsageRow]:
    """Usage from ``start`` to ``end`` (UTC days, both included), one row per group."""
    require_admin(viewer)
    if end < start:
        raise InvalidInput("to must not be before from", field="to")
    if (end - start).days >= MAX_REPORT_DAYS:
        raise InvalidInput(f"a report covers at most {MAX_REPORT_DAYS} days", field="to")
    if not 1 <= limit <= MAX_REPORT_ROWS:
        raise InvalidInput(f"limit must be between 1 and {MAX_REPORT_ROWS}", field="limit")
    return await UsageRepository(session).report(start, end, group.value, limit)
