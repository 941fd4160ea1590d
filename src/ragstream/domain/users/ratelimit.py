"""In-process sliding-window limiter for sign-in attempts."""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from datetime import UTC, datetime, timedelta

from ragstream.domain.errors import RateLimited


class SlidingWindowLimiter:
    """Allows ``limit`` hits per ``window`` seconds per key.

    State is per process; a multi-replica deployment also limits at its proxy. At most
    ``max_keys`` keys are kept: when the table is full, the keys attempted least recently make
    room (idle ones first), so a flood of new keys never lifts the limits of active ones.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        max_keys: int = 100_000,
        *,
        message: str = "too many sign-in attempts; try again later",
    ) -> None:
        self.limit = limit
        self.window = window
        self.message = message
        self._max_keys = max_keys
        # Ordered by last attempt, least recent first.
        self._hits: OrderedDict[str, deque[float]] = OrderedDict()

    def hit(self, key: str) -> None:
        now = time.monotonic()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._evict(now)
            hits = self._hits[key] = deque()
        else:
            self._hits.move_to_end(key)
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            retry_after = math.ceil(hits[0] + self.window - now)
            reset_at = datetime.now(UTC) + timedelta(seconds=retry_after)
            raise RateLimited(
                self.message,
                extensions={
                    "reason": "TOO_MANY_ATTEMPTS",
                    "limit": self.limit,
                    "retryAfterSeconds": retry_after,
                    "resetAt": reset_at.isoformat(),
                },
            )
        hits.append(now)

    def _evict(self, now: float) -> None:
        # Idle keys sit at the front; drop them, then the least recent key if still full.
        while self._hits:
            oldest = next(iter(self._hits.values()))
            if oldest and oldest[-1] > now - self.window and len(self._hits) < self._max_keys:
                return
            self._hits.popitem(last=False)
