"""All SQL about evaluations. Every statement starts from what the viewer may read."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    Double,
    Integer,
    Select,
    SQLColumnExpression,
    String,
    Uuid,
    bindparam,
    column,
    delete,
    func,
    literal,
    or_,
    select,
    true,
    tuple_,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, with_expression

from ragstream.db.list_search import contains, plan_for_the_term
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import (
    InvalidCursor,
    Page,
    PageRequest,
    decode_cursor,
    encode_cursor,
    paginate,
)

OrderField = Literal["CREATED_AT", "UPDATED_AT", "TITLE", "OVERALL_SCORE"]

# Scores are 0..5 (a check constraint holds it), so these stand in for "no score" and put
# unscored evaluations last in both directions while keeping the keyset a plain tuple.
_UNSCORED_LAST_ASC = 6.0
_UNSCORED_LAST_DESC = -1.0


@dataclass(frozen=True)
class EvaluationFilter:
    status: str | None = None
    project_type: str | None = None
    search: str | None = None
    owner_id: uuid.UUID | None = None


@dataclass(frozen=True)
class EvaluationOrder:
    field: OrderField = "CREATED_AT"
    descending: bool = True


@dataclass(frozen=True)
class OwnerPageKey:
    """One owner's page in a batch: newest first, ``after`` already decoded."""

    owner_id: uuid.UUID
    first: int
    after: tuple[datetime, uuid.UUID] | None = None


def readable_by(viewer: User) -> ColumnElement[bool]:
    """Owners read their own evaluations; administrators read everyone's."""
    if viewer.role == "ADMIN":
        return true()
    return Evaluation.owner_id == viewer.id


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


# The cursor of User.evaluations (and of the default list order): newest first.
_OWNER_PAGE_KEYS = (Evaluation.created_at, Evaluation.id)


class EvaluationRepository:
    def __init__(self, session: AsyncSession, viewer: User) -> None:
        self.session = session
        self.viewer = viewer

    def _readable(self) -> Select[Evaluation]:
        return select(Evaluation).where(readable_by(self.viewer))

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
            .where(Evaluation.id == evaluation_id, readable_by(self.viewer))
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
    def decode_owner_cursor(after: str) -> tuple[datetime, uuid.UUID]:
        """Raises ``InvalidCursor`` for anything that is not a cursor of this list."""
        created_at, evaluation_id = decode_cursor(after, _OWNER_PAGE_KEYS)
        if created_at is None or evaluation_id is None:
            raise InvalidCursor(after)
        return created_at, evaluation_id

    async def pages_by_owner(self, keys: Sequence[OwnerPageKey]) -> list[Page[Evaluation]]:
        """Many owners' pages (newest first) with their total counts, in ONE statement.

        The keys travel as arrays that ``unnest`` turns into rows; for each, one LATERAL
        subquery reads that owner's page through the owner index and another counts the owner's
        evaluations. The SQL text is the same for any number of keys.
        """
        if not keys:
            return []
        requests = (
            func.unnest(
                bindparam("owner_ids", [k.owner_id for k in keys], type_=ARRAY(Uuid())),
                bindparam(
                    "after_created",
                    [k.after[0] if k.after else None for k in keys],
                    type_=ARRAY(DateTime(timezone=True)),
                ),
                bindparam(
                    "after_ids",
                    [k.after[1] if k.after else None for k in keys],
                    type_=ARRAY(Uuid()),
                ),
                bindparam("limits", [k.first + 1 for k in keys], type_=ARRAY(Integer())),
            )
            .table_valued(
                column("owner_id", Uuid()),
                column("after_created", DateTime(timezone=True)),
                column("after_id", Uuid()),
                column("lim", Integer()),
                with_ordinality="ordinal",
            )
            .render_derived(name="requests", with_types=False)
        )
        readable = readable_by(self.viewer)
        page = (
            select(Evaluation)
            .where(
                Evaluation.owner_id == requests.c.owner_id,
                readable,
                or_(
                    requests.c.after_created.is_(None),
                    tuple_(*_OWNER_PAGE_KEYS)
                    < tuple_(requests.c.after_created, requests.c.after_id),
                ),
            )
            .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
            .limit(requests.c.lim)
            .lateral("page")
        )
        counts = (
            select(func.count().label("total"))
            .select_from(Evaluation)
            .where(Evaluation.owner_id == requests.c.owner_id, readable)
            .lateral("counts")
        )
        row = aliased(Evaluation, page)
        stmt = (
            select(requests.c.ordinal, counts.c.total, row)
            .select_from(requests)
            .join(counts, true())
            .outerjoin(page, true())
            .order_by(requests.c.ordinal, page.c.created_at.desc(), page.c.id.desc())
        )
        totals: dict[int, int] = {}
        rows: dict[int, list[Evaluation]] = defaultdict(list)
        for ordinal, total, evaluation in await self.session.execute(stmt):
            index = int(ordinal) - 1
            totals[index] = int(total)
            if evaluation is not None:
                rows[index].append(evaluation)
        pages: list[Page[Evaluation]] = []
        for index, key in enumerate(keys):
            found = rows[index]
            items = found[: key.first]
            pages.append(
                Page(
                    items=items,
                    cursors=[encode_cursor((e.created_at, e.id)) for e in items],
                    has_next_page=len(found) > key.first,
                    has_previous_page=key.after is not None,
                    total_count=totals.get(index, 0),
                )
            )
        return pages
