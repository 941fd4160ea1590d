"""Sliding-window limits on sign-in and sign-up attempts, counted in the database.

Every server process on the database counts against the same windows, so the limits hold
however many processes serve (each attempt is a row; see db/repositories/attempts.py).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.repositories.attempts import AttemptRepository
from ragstream.domain.errors import RateLimited

PRUNE_EVERY = 1_000  # attempts counted by a process between two prunes of a limit's table
MAX_KEY_CHARS = 400


class SlidingWindowLimiter:
    """Allows ``limit`` attempts per ``window`` seconds per key, in the limit ``scope``."""

    def __init__(
        self,
        scope: str,
        limit: int,
        window: float = 60.0,
        *,
        message: str = "too many sign-in attempts; try again later",
    ) -> None:
        self.scope = scope
        self.limit = limit
        self.window = window
        self.message = message
        self._counted = 0

    async def hit(self, session: AsyncSession, key: str) -> RateLimited | None:
        """Counts an attempt for ``key`` in the caller's transaction, or returns the refusal
        (RATE_LIMITED, reason TOO_MANY_ATTEMPTS), which counts nothing."""
        attempts = AttemptRepository(session)
        self._counted += 1
        if self._counted % PRUNE_EVERY == 0:  # rows of keys never tried again
            await attempts.prune(self.scope, self.window)
        wait = await attempts.hit(
            self.scope, key[:MAX_KEY_CHARS], limit=self.limit, window=self.window
        )
        if wait is None:
            return None
        retry_after = max(math.ceil(wait), 1)
        reset_at = datetime.now(UTC) + timedelta(seconds=retry_after)
        return RateLimited(
            self.message,
            extensions={
                "reason": "TOO_MANY_ATTEMPTS",
                "limit": self.limit,
                "retryAfterSeconds": retry_after,
                "resetAt": reset_at.isoformat(),
            },
        )
