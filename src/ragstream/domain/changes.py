"""Partial updates: a field the caller did not give is KEEP, distinct from an explicit null."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Literal, TypeAlias, TypeVar

T = TypeVar("T")
V = TypeVar("V")


class Keep(enum.Enum):
    """Marks a field an update leaves as it is (distinct from an explicit null)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP

# A field of a partial update: a new value, an explicit null, or KEEP.
Change: TypeAlias = T | Literal[Keep.KEEP] | None


def updated(current: V, change: Change[T], validate: Callable[[T | None], V]) -> V:
    """The field's value after the update: ``current`` when kept, else the validated change."""
    return current if change is KEEP else validate(change)
