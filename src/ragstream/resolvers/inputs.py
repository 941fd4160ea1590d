"""From GraphQL input objects to domain calls: the one place UNSET becomes KEEP."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

import strawberry

from ragstream.domain.changes import KEEP, Change

T = TypeVar("T")
U = TypeVar("U")


@overload
def keep_unset(value: T | None) -> Change[T]: ...


@overload
def keep_unset(value: T | None, convert: Callable[[T], U]) -> Change[U]: ...


def keep_unset(value: Any, convert: Callable[[Any], Any] | None = None) -> Any:
    """An omitted input field is KEEP, an explicit null stays None, anything else is the value
    (passed through ``convert`` when given)."""
    if value is strawberry.UNSET:
        return KEEP
    if value is None or convert is None:
        return value
    return convert(value)
