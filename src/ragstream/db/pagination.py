"""Keyset (cursor) pagination: stable under inserts, no OFFSET.

A cursor is the opaque, URL-safe encoding of the sort key of the row it points at. Pages are
fetched with a row-value comparison on that key, so the cost of a page does not depend on its depth.
`paginate_parents` reads the pages of many parents (e.g. the messages of every conversation in a
list) at once, with the same pages and cursors as `paginate` gives for each parent alone.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar, overload

from sqlalchemy import (
    ARRAY,
    Integer,
    Select,
    bindparam,
    column,
    func,
    literal,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, aliased, defer

T = TypeVar("T")


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True)
class PageRequest:
    first: int
    after: str | None = None
    # False when the caller does not need `Page.total_count` (one statement fewer).
    count: bool = True


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    cursors: Sequence[str]
    has_next_page: bool
    has_previous_page: bool
    # None when the request said not to count.
    total_count: int | None


class Cursors(Sequence[str]):
    """A page's cursors, each encoded when first read: a response that selects no cursor
    encodes none."""

    __slots__ = ("_cursor_of", "_encoded", "_items")

    def __init__(self, items: Sequence[T], cursor_of: Callable[[T], Sequence[Any]]) -> None:
        self._items: Sequence[Any] = items
        self._cursor_of: Callable[[Any], Sequence[Any]] = cursor_of
        self._encoded: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self._items)))]
        position = range(len(self._items))[index]  # IndexError as a list raises it
        cursor = self._encoded.get(position)
        if cursor is None:
            cursor = encode_cursor(self._cursor_of(self._items[position]))
            self._encoded[position] = cursor
        return cursor


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
    # Timestamps and ids, the common keys, are written directly: their text needs no JSON
    # escaping, so this is exactly what `json.dumps` writes for them.
    parts: list[str] = []
    for value in values:
        if isinstance(value, datetime):
            parts.append(f'"{value.isoformat()}"')
        elif isinstance(value, uuid.UUID):
            parts.append(f'"{value}"')
        else:
            text = json.dumps([_to_json(v) for v in values], separators=(",", ":"))
            break
    else:
        text = f"[{','.join(parts)}]"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


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
    columns: bool = False,
) -> Page[T]:
    """One page of ``stmt`` ordered by ``keys`` (the last key must be unique, e.g. the id).

    The page's items are the statement's entities, or with ``columns`` its plain rows.
    """
    total = (
        await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
        if request.count
        else None
    )
    after = None
    if request.after is not None:
        values = decode_cursor(request.after, keys)
        after = [literal(v, k.type) for v, k in zip(values, keys, strict=True)]
    page = keyset_page(stmt, keys, descending=descending, after=after, limit=request.first + 1)
    if columns:
        # Plain rows need none of the ORM's loading: the session's connection runs it as is.
        rows: list[T] = list((await (await session.connection()).execute(page)).all())
    else:
        rows = list((await session.scalars(page)).all())
    return page_of(rows, request, cursor_of, None if total is None else int(total))


def keyset_page(
    stmt: Select[Any],
    keys: Sequence[Any],
    *,
    descending: bool,
    after: Sequence[Any] | None,
    limit: Any,
) -> Select[Any]:
    """``stmt`` ordered by ``keys``, from the row after the key values ``after`` (SQL
    expressions: literals, or parameters of a statement compiled once), ``limit`` rows."""
    if after is not None:
        bound = tuple_(*after)
        stmt = stmt.where(tuple_(*keys) < bound if descending else tuple_(*keys) > bound)
    ordering = [k.desc() if descending else k.asc() for k in keys]
    return stmt.order_by(*ordering).limit(limit)


def page_of(
    rows: Sequence[T],
    request: PageRequest,
    cursor_of: Callable[[T], Sequence[Any]],
    total_count: int | None,
) -> Page[T]:
    """The page of ``rows``, read with one row more than ``request.first`` asks for."""
    items = list(rows[: request.first])
    return Page(
        items=items,
        cursors=Cursors(items, cursor_of),
        has_next_page=len(rows) > request.first,
        has_previous_page=request.after is not None,
        total_count=total_count,
    )


@dataclass(frozen=True)
class ParentPageKey:
    """One parent's page in a batch (see `paginate_parents`); ``after`` was checked already."""

    parent_id: uuid.UUID
    first: int
    after: str | None = None


def parent_page_key(
    parent_id: uuid.UUID, request: PageRequest, keys: Sequence[Any]
) -> ParentPageKey:
    """Raises ``InvalidCursor`` for an ``after`` that is not a cursor of a list ordered by ``keys``,
    so a bad argument fails its own field before it can join (and fail) a batch."""
    if request.after is not None:
        decode_cursor(request.after, keys)
    return ParentPageKey(parent_id=parent_id, first=request.first, after=request.after)


async def paginate_parents(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    parent: InstrumentedAttribute[Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    cursor_of: Callable[[T], Sequence[Any]],
    requests: Sequence[ParentPageKey],
    descending: bool = False,
    deferred: Sequence[str] = (),
) -> list[Page[T]]:
    """For each request, the page `paginate` returns for ``stmt.where(parent == parent_id)``.

    First pages (no ``after``) of any number of parents are read in ONE statement, see
    `_first_pages`. A page after a cursor (a cursor belongs to one parent's list) is read alone by
    `paginate`, whose row-value bound seeks straight to its position. ``stmt`` selects the child
    entity that ``parent`` and ``keys`` belong to; ``deferred`` names columns of it that are not
    loaded.
    """
    pages: dict[int, Page[T]] = {}
    alone = stmt.options(*(defer(getattr(parent.class_, name)) for name in deferred))
    for index, request in enumerate(requests):
        if request.after is not None:
            pages[index] = await paginate(
                session,
                alone.where(parent == request.parent_id),
                keys=keys,
                cursor_of=cursor_of,
                request=PageRequest(first=request.first, after=request.after),
                descending=descending,
            )
    firsts = [index for index, request in enumerate(requests) if request.after is None]
    if firsts:
        found: list[Page[T]] = await _first_pages(
            session,
            stmt,
            parent=parent,
            keys=keys,
            cursor_of=cursor_of,
            requests=[requests[index] for index in firsts],
            descending=descending,
            deferred=deferred,
        )
        pages.update(zip(firsts, found, strict=True))
    return [pages[index] for index in range(len(requests))]


async def _first_pages(
    session: AsyncSession,
    stmt: Select[Any],
    *,
    parent: InstrumentedAttribute[Any],
    keys: Sequence[InstrumentedAttribute[Any]],
    cursor_of: Callable[[T], Sequence[Any]],
    requests: Sequence[ParentPageKey],
    descending: bool,
    deferred: Sequence[str],
) -> list[Page[T]]:
    """First pages with their total counts, one statement for all parents.

    The parent ids and page sizes travel as arrays that ``unnest`` turns into rows; for each row
    one LATERAL subquery reads ``first + 1`` children in key order (through the parent's index,
    stopping there) and another counts all of them. The SQL text is the same for any number of
    parents, and each parent costs what its own page and count would.
    """
    batch = (
        func.unnest(
            bindparam("parent_ids", [r.parent_id for r in requests], type_=ARRAY(parent.type)),
            bindparam("limits", [r.first + 1 for r in requests], type_=ARRAY(Integer())),
        )
        .table_valued(
            column("parent_id", parent.type),
            column("lim", Integer()),
            with_ordinality="ordinal",
        )
        .render_derived(name="requests", with_types=False)
    )
    children = stmt.where(parent == batch.c.parent_id)
    page = (
        children.order_by(*(k.desc() if descending else k.asc() for k in keys))
        .limit(batch.c.lim)
        .lateral("page")
    )
    counts = (
        children.with_only_columns(func.count().label("total"), maintain_column_froms=True)
        .order_by(None)
        .lateral("counts")
    )
    row = aliased(parent.class_, page)
    ordering = [getattr(row, k.key) for k in keys]
    query = (
        select(batch.c.ordinal, counts.c.total, row)
        .select_from(batch)
        .join(counts, true())
        .outerjoin(page, true())
        .order_by(batch.c.ordinal, *(k.desc() if descending else k.asc() for k in ordering))
        .options(*(defer(getattr(row, name)) for name in deferred))
    )
    totals: dict[int, int] = {}
    rows: dict[int, list[T]] = defaultdict(list)
    for ordinal, total, child in await session.execute(query):
        index = int(ordinal) - 1
        totals[index] = int(total)
        if child is not None:
            rows[index].append(child)
    pages: list[Page[T]] = []
    for index, request in enumerate(requests):
        found = rows[index]
        items = found[: request.first]
        pages.append(
            Page(
                items=items,
                cursors=Cursors(items, cursor_of),
                has_next_page=len(found) > request.first,
                has_previous_page=False,
                total_count=totals.get(index, 0),
            )
        )
    return pages
