"""Keyset (cursor) pagination: stable under inserts, no OFFSET.

A cursor is the opaque, URL-safe encoding of the sort key of the row it points at. Pages are
fetched with a row-value comparison on that key, so the cost of a page does not depend on its depth.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

T = TypeVar("T")


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class PageRequest:
    first: int
    after: str | None = None


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool
    total_count: int


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _from_json(value: Any, python_type: type) -> Any:
    if value is None:
        return None
    if python_type is datetime:
        return datetime.fromisoformat(value)
    if python_type is uuid.UUID:
        return uuid.UUID(value)
    if python_type is float:
        return float(value)
    return python_type(value)


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps([_to_json(v) for v in values], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, keys: Sequence[Any]) -> list[Any]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
        if not isinstance(values, list) or len(values) != len(keys):
            raise InvalidCursor(cursor)
        decoded = [_from_json(v, k.type.python_type) for v, k in zip(values, keys, strict=True)]
    except (ValueError, TypeError, binascii.Error, NotImplementedError) as exc:
        raise InvalidCursor(cursor) from exc
    # A NULL bound compares as unknown and silently ends the list: only nullable keys allow it.
    if any(
        v is None and not getattr(k, "nullable", True) for v, k in zip(decoded, keys, strict=True)
    ):
        raise InvalidCursor(cursor)
    return decoded


async def paginate(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    keys: Sequence[Any],
    cursor_of: Callable[[T], Sequence[Any]],
    request: PageRequest,
    descending: bool = False,
) -> Page[T]:
    """One page of ``stmt`` ordered by ``keys`` (the last key must be unique, e.g. the id)."""
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    if request.after is not None:
        after = decode_cursor(request.after, keys)
        bound = tuple_(*(literal(v, k.type) for v, k in zip(after, keys, strict=True)))
        stmt = stmt.where(tuple_(*keys) < bound if descending else tuple_(*keys) > bound)
    ordering = [k.desc() if descending else k.asc() for k in keys]
    result = await session.scalars(stmt.order_by(*ordering).limit(request.first + 1))
    rows: list[T] = list(result.all())
    items = rows[: request.first]
    return Page(
        items=items,
        cursors=[encode_cursor(cursor_of(item)) for item in items],
        has_next_page=len(rows) > request.first,
        has_previous_page=request.after is not None,
        total_count=int(total or 0),
    )
