"""The chat usage ledger (`usage_daily`): one upsert per question and per finished answer."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models.usage import UsageDaily


@dataclass(frozen=True)
class TokenTotals:
    prompt_tokens: int
    completion_tokens: int
    answers: int
    questions_today: int


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _add(
        self,
        user_id: uuid.UUID,
        day: date,
        *,
        questions: int = 0,
        answers: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        stmt = insert(UsageDaily).values(
            user_id=user_id,
            day=day,
            questions=questions,
            answers=answers,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        # Atomic per row: concurrent additions for the same user and day all count.
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[UsageDaily.user_id, UsageDaily.day],
                set_={
                    "questions": UsageDaily.questions + stmt.excluded.questions,
                    "answers": UsageDaily.answers + stmt.excluded.answers,
                    "prompt_tokens": UsageDaily.prompt_tokens + stmt.excluded.prompt_tokens,
                    "completion_tokens": (
                        UsageDaily.completion_tokens + stmt.excluded.completion_tokens
                    ),
                },
            )
        )

    async def add_exchange(self, user_id: uuid.UUID, day: date) -> None:
        """A question and the answer started for it."""
        await self._add(user_id, day, questions=1, answers=1)

    async def add_tokens(
        self, user_id: uuid.UUID, day: date, *, prompt_tokens: int, completion_tokens: int
    ) -> None:
        """The final token counts of one answer."""
        await self._add(
            user_id, day, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens
        )

    async def questions_on(self, user_id: uuid.UUID, day: date) -> int:
        count = await self.session.scalar(
            select(UsageDaily.questions).where(UsageDaily.user_id == user_id, UsageDaily.day == day)
        )
        return int(count or 0)

    async def totals(
        self, user_ids: Sequence[uuid.UUID], *, today: date
    ) -> dict[uuid.UUID, TokenTotals]:
        """All-time token and answer sums of each account, and its questions today, in one scan."""
        rows = await self.session.execute(
            select(
                UsageDaily.user_id,
                func.sum(UsageDaily.prompt_tokens),
                func.sum(UsageDaily.completion_tokens),
                func.sum(UsageDaily.answers),
                func.coalesce(func.sum(UsageDaily.questions).filter(UsageDaily.day == today), 0),
            )
            .where(UsageDaily.user_id.in_(user_ids))
            .group_by(UsageDaily.user_id)
        )
        found = {
            user: TokenTotals(int(prompt), int(completion), int(answers), int(questions))
            for user, prompt, completion, answers, questions in rows
        }
        return {i: found.get(i, TokenTotals(0, 0, 0, 0)) for i in user_ids}
