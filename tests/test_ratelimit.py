"""The sign-in limiter on its own: sliding windows per key and a bounded key table."""

from __future__ import annotations

import pytest

from ragstream.domain.errors import RateLimited
from ragstream.domain.users.ratelimit import SlidingWindowLimiter


def test_each_key_has_its_own_limit() -> None:
    limiter = SlidingWindowLimiter(limit=2)
    limiter.hit("a")
    limiter.hit("a")
    with pytest.raises(RateLimited):
        limiter.hit("a")
    limiter.hit("b")


def test_a_full_table_evicts_the_least_recent_key_and_keeps_the_others_limited() -> None:
    limiter = SlidingWindowLimiter(limit=1, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.hit(key)
    # A blocked attempt counts as activity: "a" is now the most recent key.
    with pytest.raises(RateLimited):
        limiter.hit("a")

    limiter.hit("d")  # the table is full: "b", the least recent, makes room

    for key in ("a", "c", "d"):
        with pytest.raises(RateLimited):
            limiter.hit(key)
    limiter.hit("b")  # forgotten, so allowed again


def test_a_flood_of_new_keys_never_lifts_every_limit() -> None:
    limiter = SlidingWindowLimiter(limit=1, max_keys=100)
    limiter.hit("victim@example.com")
    for i in range(99):
        limiter.hit(f"spray-{i}@example.com")
    with pytest.raises(RateLimited):
        limiter.hit("victim@example.com")  # touched: now the most recent key
    for i in range(99, 198):
        limiter.hit(f"spray-{i}@example.com")
    with pytest.raises(RateLimited):
        limiter.hit("victim@example.com")
