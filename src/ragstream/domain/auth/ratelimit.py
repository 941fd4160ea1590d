"""In-process sliding-window limiter for sign-in attempts."""

from __future__ import annotations

import math
import time
from collections import deque

from ragstream.domain.errors import RateLimited


class SlidingWindowLimiter:
    """Allows ``limit`` hits per ``window`` seconds per key.

    State is per process; a multi-replica deployment also limits at its proxy.
    """

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str) -> None:
        now = time.monotonic()
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._evict(now)
            hits = self._hits[key] = deque()
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if len(hits) >= self.limit:
            retry_after = math.ceil(hits[0] + self.window - now)
            raise RateLimited(
                "too many sign-in attempts; try again later",
                extensions={"limit": self.limit, "retryAfterSeconds": retry_after},
            )
        hits.append(now)

    def _evict(self, now: float) -> None:
        stale = [k for k, v in self._hits.items() if not v or v[-1] <= now - self.window]
        for key in stale:
            del self._hits[key]
        if len(self._hits) >= self._max_keys:
            self._hits.clear()
