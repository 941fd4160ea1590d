"""All SQL about evaluations. Every statement starts from what the viewer may read."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, NamedTuple, TypedDict, cast

from sqlalchemy import (
    ColumnElement,
    Double,
    Integer,
    Select,
    SQLColumnExpression,
    String,
    Uuid,
    and_,
    bindparam,
    delete,
    func,
    literal,
    null,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import with_expression

from ragstream.db.driver import DriverStatement, DriverTarget
from ragstream.db.list_search import contains, plan_for_the_term
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import (
    Page,
    PageRequest,
    ParentPageKey,
    decode_cursor,
    keyset_page,
    page_of,
    paginate,
    paginate_parents,
    parent_page_key,
)
from ragstream.db.repositories.base import ReadableRepository
from ragstream.db.repositories.users import UserRepository
from ragstream.db.signed_in_rows import signed_in_rows, split_signed_in
from ragstream.domain.evaluations.enums import EvaluationStatus, ProjectType
from ragstream.domain.users.enums import Role

OrderField = Literal["CREATED_AT", "UPDATED_AT", "TITLE", "OVERALL_SCORE"]

# Scores are 0..5 (a check constraint holds it), so these stand in for "no score" and put
# unscored evaluations last in both directions while keeping the keyset a plain tuple.
_UNSCORED_LAST_ASC = 6.0
_UNSCORED_LAST_DESC = -1.0


@dataclass(frozen=True)
class EvaluationFilter:
    status: EvaluationStatus | None = None
    project_type: ProjectType | None = None
    search: str | None = None
    owner_id: uuid.UUID | None = None


@dataclass(frozen=True)
class EvaluationOrder:
    field: OrderField = "CREATED_AT"
    descending: bool = True


def _sort_key(order: EvaluationOrder) -> SQLColumnExpression[Any]:
    if order.field == "UPDATED_AT":
        return Evaluation.updated_at
    if order.field == "TITLE":
        # Case-insensitive, so "acme" and "ACME" sit together.
        return func.lower(Evaluation.title, type_=String)
    if order.field == "OVERALL_SCORE":
        unscored = _UNSCORED_LAST_DESC if order.descending else _UNSCORED_LAST_ASC
        return func.coalesce(Evaluation.overall_score, literal(unscored, Double), type_=Double)
    return Evaluation.created_at


class ListedEvaluation(NamedTuple):
    """An evaluation of a list as plain values, named as the model's attributes (no ORM object).

    A column the list was not asked for (`ListedColumns`) is None: it was not read."""

    id: uuid.UUID
    owner_id: uuid.UUID
    title: str
    company_name: str
    project_type: ProjectType
    status: EvaluationStatus
    criteria: list[Any] | None  # None when the caller did not ask for them
    overall_score: float | None
    notes: str | None
    created_at: datetime
    updated_at: datetime
    sort_key: Any


class ListedOwner(NamedTuple):
    """The owner of a listed evaluation, named as the User model's attributes (None: a column
    the list was not asked for)."""

    id: uuid.UUID
    email: str
    display_name: str
    role: Role
    is_active: bool
    created_at: datetime


_LISTED = (
    Evaluation.id,
    Evaluation.owner_id,
    Evaluation.title,
    Evaluation.company_name,
    Evaluation.project_type,
    Evaluation.status,
)
_LISTED_AFTER_CRITERIA = (
    Evaluation.overall_score,
    Evaluation.notes,
    Evaluation.created_at,
    Evaluation.updated_at,
)
_OWNER = (User.id, User.email, User.display_name, User.role, User.is_active, User.created_at)
ListedRow = tuple[ListedEvaluation, ListedOwner | None]


class ListedColumns(NamedTuple):
    """What a list reads of each evaluation and of its owner: `ListedEvaluation` and
    `ListedOwner` field names. The rest is not sent by the database (the row has None there):
    a page of twenty rows carries a few hundred values less when the query selects a few
    fields. The keys a page needs (the evaluation's id and sort key, the owner's ids when the
    owner is read) are always read."""

    evaluation: frozenset[str]
    owner: frozenset[str] | None = None  # None: no owner is read

    @property
    def criteria(self) -> bool:
        return "criteria" in self.evaluation

    @property
    def owners(self) -> bool:
        return self.owner is not None

    def evaluation_columns(self, stored_criteria: Any, key: Any) -> list[Any]:
        wanted = self.evaluation | {"id", "sort_key"} | ({"owner_id"} if self.owners else set())
        sources = (*_LISTED, stored_criteria, *_LISTED_AFTER_CRITERIA, key)
        return [
            source.label(name) if name in wanted else null().label(name)
            for name, source in zip(ListedEvaluation._fields, sources, strict=True)
        ]

    def owner_columns(self) -> list[Any]:
        wanted = (self.owner or frozenset()) | {"id"}
        return [
            column if name in wanted else null().label(f"owner_{name}")
            for name, column in zip(ListedOwner._fields, _OWNER, strict=True)
        ]


# Everything of each evaluation and its owner.
ALL_LISTED = ListedColumns(frozenset(ListedEvaluation._fields), frozenset(ListedOwner._fields))


# The cursor of User.evaluations (and of the default list order): newest first.
_OWNER_PAGE_KEYS = (Evaluation.created_at, Evaluation.id)


class _ListShape(NamedTuple):
    """What the SQL text of a list page depends on (values travel as parameters)."""

    admin: bool
    order: EvaluationOrder
    columns: ListedColumns
    after: bool


class _ViewerParameter(NamedTuple):
    """A viewer whose id is the statement's ``viewer_id`` parameter, for rules written once
    (``readable_by``) in statements compiled once for every viewer of a kind."""

    is_admin: bool
    id: Any


def _viewer_parameter(admin: bool) -> User:
    return cast("User", _ViewerParameter(admin, bindparam("viewer_id", type_=Uuid)))


def _listed_keys(order: EvaluationOrder) -> tuple[Any, ...]:
    return (_sort_key(order), Evaluation.id)


# One statement per shape; shapes differ by the columns a selection reads, so they are kept
# in a bounded cache.
_SHAPES_KEPT = 256


@functools.lru_cache(maxsize=_SHAPES_KEPT)
def _listed_page(shape: _ListShape) -> DriverStatement:
    return DriverStatement(_listed_select(shape, _viewer_parameter(shape.admin)))


def _listed_select(shape: _ListShape, viewer: User) -> Select[Any]:
    """A list page for ``viewer`` (whose id may be a parameter or a column)."""
    key, evaluation_id = keys = _listed_keys(shape.order)
    columns = shape.columns
    stmt = select(*columns.evaluation_columns(Evaluation.criteria, key)).where(
        EvaluationRepository.readable_by(viewer)
    )
    if columns.owners:
        readable_owner = and_(User.id == Evaluation.owner_id, UserRepository.readable_by(viewer))
        stmt = stmt.add_columns(*columns.owner_columns()).outerjoin(User, readable_owner)
    after = None
    if shape.after:
        after = [
            bindparam("after_key", type_=key.type),
            bindparam("after_id", type_=evaluation_id.type),
        ]
    limit = bindparam("page_limit", type_=Integer)
    return keyset_page(stmt, keys, descending=shape.order.descending, after=after, limit=limit)


@functools.lru_cache(maxsize=_SHAPES_KEPT)
def _signed_in_page(shape: _ListShape) -> DriverStatement:
    """The viewer check and a list page in one statement (see `signed_in_rows`), so a
    signed-in page load is one round trip instead of two. Both pages (an administrator reads
    every evaluation, anyone else their own) are written with `readable_by`."""

    def page(is_admin: bool, viewer_id: Any) -> Select[Any]:
        viewer = cast("User", _ViewerParameter(is_admin, viewer_id))
        return _listed_select(shape._replace(admin=is_admin), viewer)

    def ordering(columns: Any) -> list[Any]:
        keys = [columns.p_sort_key, columns.p_id]
        return [key.desc() for key in keys] if shape.order.descending else keys

    return DriverStatement(signed_in_rows(page, ordering))


@functools.cache
def _listed_count(admin: bool) -> DriverStatement:
    viewer = _viewer_parameter(admin)
    readable = EvaluationRepository.readable_by(viewer)
    return DriverStatement(select(func.count()).select_from(Evaluation).where(readable))


class SignedInParameters(TypedDict):
    """What the viewer check is run with: the token's account and sign-in session."""

    user_id: uuid.UUID
    session_id: uuid.UUID
    environment: str


def _page_parameters(request: PageRequest, order: EvaluationOrder) -> dict[str, Any]:
    """Raises ``InvalidCursor`` for an ``after`` that is not a cursor of this order."""
    params: dict[str, Any] = {"page_limit": request.first + 1}
    if request.after is not None:
        key, evaluation_id = decode_cursor(request.after, _listed_keys(order))
        params.update(after_key=key, after_id=evaluation_id)
    return params


def _listed_rows(
    rows: Sequence[Sequence[Any]],
    request: PageRequest,
    *,
    owners: bool,
    total: int | None,
    start: int = 0,
) -> Page[ListedRow]:
    """The page of ``rows``, each an evaluation's columns from ``start`` on, then its owner's."""
    split = start + len(ListedEvaluation._fields)
    # The named tuples built directly (the lengths are the statement's): `_make` is a Python
    # call, two for each row of every page.
    new = tuple.__new__
    listed = [
        (
            new(ListedEvaluation, row[start:split]),
            new(ListedOwner, row[split:]) if owners and row[split] is not None else None,
        )
        for row in rows
    ]
    return page_of(listed, request, lambda item: (item[0].sort_key, item[0].id), total)


class EvaluationRepository(ReadableRepository[Evaluation]):
    """Reads and writes for one viewer, given at construction: every statement is scoped."""

    model = Evaluation

    def __init__(self, session: AsyncSession, viewer: User) -> None:
        super().__init__(session)
        self.viewer = viewer

    @classmethod
    def readable_by(cls, viewer: User) -> ColumnElement[bool]:
        """Owners read their own evaluations; administrators read everyone's."""
        return true() if viewer.is_admin else Evaluation.owner_id == viewer.id

    def _readable(self) -> Select[Evaluation]:
        return self.readable(self.viewer)

    async def get(self, evaluation_id: uuid.UUID, *, for_update: bool = False) -> Evaluation | None:
        stmt = self._readable().where(Evaluation.id == evaluation_id)
        if for_update:
            # Rules read the current row (e.g. status COMPLETED needs the stored criteria), so
            # concurrent updates of one evaluation are serialised instead of racing.
            stmt = stmt.with_for_update()
        return await self.session.scalar(stmt)

    async def add(self, evaluation: Evaluation) -> Evaluation:
        self.session.add(evaluation)
        await self.session.flush()
        return evaluation

    async def save(self, evaluation: Evaluation) -> Evaluation:
        """Write pending changes; updated_at comes back in the same statement."""
        await self.session.flush()
        return evaluation

    async def delete(self, evaluation_id: uuid.UUID) -> bool:
        deleted = await self.session.scalar(
            delete(Evaluation)
            .where(Evaluation.id == evaluation_id, self.readable_by(self.viewer))
            .returning(Evaluation.id)
        )
        return deleted is not None

    async def page(
        self, request: PageRequest, filter: EvaluationFilter, order: EvaluationOrder
    ) -> Page[Evaluation]:
        stmt = self._readable()
        if filter.status is not None:
            stmt = stmt.where(Evaluation.status == filter.status)
        if filter.project_type is not None:
            stmt = stmt.where(Evaluation.project_type == filter.project_type)
        if filter.owner_id is not None:
            stmt = stmt.where(Evaluation.owner_id == filter.owner_id)
        if filter.search:
            await plan_for_the_term(self.session)
            stmt = stmt.where(contains((Evaluation.title, Evaluation.company_name), filter.search))
        key = _sort_key(order)
        return await paginate(
            self.session,
            stmt.options(with_expression(Evaluation.sort_key, key)),
            keys=[key, Evaluation.id],
            cursor_of=lambda e: (e.sort_key, e.id),
            request=request,
            descending=order.descending,
        )

    @staticmethod
    async def page_rows(
        on: DriverTarget,
        viewer: User,
        request: PageRequest,
        order: EvaluationOrder,
        *,
        columns: ListedColumns,
    ) -> Page[ListedRow]:
        """`page` with no filter, as plain rows: the same items and cursors, no ORM objects.

        ``columns``: what to read of each evaluation (the stored criteria among it) and, if
        anything, of its owner, in the same statement, joined with the accounts the viewer may
        read (None for one it may not). The statements are compiled once per shape and run on
        the driver (see db/driver.py): this is the list every page load asks for.
        """
        shape = _ListShape(viewer.is_admin, order, columns, request.after is not None)
        params = _page_parameters(request, order)
        params["viewer_id"] = viewer.id
        total = None
        if request.count:
            counted = await _listed_count(viewer.is_admin).fetch(on, params)
            total = int(counted[0][0])
        rows = await _listed_page(shape).fetch(on, params)
        return _listed_rows(rows, request, owners=columns.owners, total=total)

    @staticmethod
    def check_cursor(request: PageRequest, order: EvaluationOrder) -> None:
        """Raises ``InvalidCursor`` when ``request.after`` is not a cursor of ``order``."""
        _page_parameters(request, order)

    @staticmethod
    async def signed_in_page_rows(
        on: DriverTarget,
        signed_in: SignedInParameters,
        request: PageRequest,
        order: EvaluationOrder,
        *,
        columns: ListedColumns,
    ) -> tuple[tuple[User, str], Page[ListedRow]] | None:
        """The viewer check (`FlagRepository.signed_in_with_flags`) and `page_rows` for that
        viewer, without a count, in one statement; None when no live account signed in."""
        shape = _ListShape(False, order, columns, request.after is not None)
        params = _page_parameters(request, order)
        params.update(signed_in)
        found = split_signed_in(await _signed_in_page(shape).fetch(on, params))
        if found is None:
            return None
        viewer, rows = found
        return viewer, _listed_rows(rows, request, owners=columns.owners, total=None)

    @staticmethod
    def page_key(owner_id: uuid.UUID, request: PageRequest) -> ParentPageKey:
        """Raises ``InvalidCursor`` for anything that is not a cursor of an owner's list."""
        return parent_page_key(owner_id, request, _OWNER_PAGE_KEYS)

    async def pages_by_owner(self, keys: Sequence[ParentPageKey]) -> list[Page[Evaluation]]:
        """Owners' evaluations the viewer may read, newest first, a page per key; the first
        pages of all the owners are one statement (see `paginate_parents`)."""
        return await paginate_parents(
            self.session,
            self._readable(),
            parent=Evaluation.owner_id,
            keys=_OWNER_PAGE_KEYS,
            cursor_of=lambda e: (e.created_at, e.id),
            requests=keys,
            descending=True,
        )
