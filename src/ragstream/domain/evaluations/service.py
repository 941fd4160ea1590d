"""Evaluations: create, read, change and delete a user's assessments.

Callers pass the session (the unit of work they own) and the signed-in viewer. Authorization is
the repository's readable statement, so another user's evaluation is simply not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.driver import DriverTarget
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import Page, PageRequest, ParentPageKey
from ragstream.db.repositories.evaluations import (
    EvaluationFilter,
    EvaluationOrder,
    EvaluationRepository,
    ListedColumns,
    ListedRow,
    OrderField,
    SignedInParameters,
)
from ragstream.domain.changes import KEEP, Change, updated
from ragstream.domain.errors import Forbidden, InvalidInput, not_found
from ragstream.domain.evaluations import rules
from ragstream.domain.evaluations.enums import EvaluationStatus, ProjectType
from ragstream.domain.evaluations.rules import Criterion
from ragstream.domain.flags.features import FeatureDefaults
from ragstream.domain.flags.service import SignedIn, signed_in_of
from ragstream.domain.pagination import cursor_errors, page_request
from ragstream.domain.users.tokens import AccessClaims

KIND = "evaluation"


@dataclass(frozen=True)
class NewEvaluation:
    title: str
    company_name: str
    project_type: ProjectType | str = ProjectType.OTHER
    status: EvaluationStatus | str = EvaluationStatus.DRAFT
    notes: str | None = None
    criteria: Sequence[Criterion] = ()


@dataclass(frozen=True)
class EvaluationChanges:
    """A partial update: fields left at KEEP do not change; criteria are replaced as a whole."""

    title: Change[str] = KEEP
    company_name: Change[str] = KEEP
    project_type: Change[str] = KEEP
    status: Change[str] = KEEP
    notes: Change[str] = KEEP
    criteria: Change[Sequence[Criterion]] = KEEP


def criteria_of(evaluation: Evaluation) -> list[Criterion]:
    return [Criterion.from_json(value) for value in evaluation.criteria]


def _set_criteria(evaluation: Evaluation, criteria: Sequence[Criterion]) -> None:
    # The stored overall score always follows the criteria it is computed from.
    evaluation.criteria = [c.to_json() for c in criteria]
    evaluation.overall_score = rules.overall_score(criteria)


def _required(value: str | None, field: str) -> str:
    if value is None:
        raise InvalidInput(f"{field} cannot be null", field=field)
    return value


def _required_criteria(criteria: Sequence[Criterion] | None) -> Sequence[Criterion]:
    if criteria is None:
        raise InvalidInput("criteria cannot be null; pass [] to remove them all", field="criteria")
    return criteria


async def create_evaluation(session: AsyncSession, viewer: User, new: NewEvaluation) -> Evaluation:
    """A new evaluation owned by the viewer."""
    criteria = rules.validate_criteria(new.criteria)
    status = rules.validate_status(new.status)
    rules.check_completion(status, criteria, field="status")
    evaluation = Evaluation(
        owner_id=viewer.id,
        title=rules.validate_title(new.title),
        company_name=rules.validate_company_name(new.company_name),
        project_type=rules.validate_project_type(new.project_type),
        status=status,
        notes=rules.validate_notes(new.notes),
    )
    _set_criteria(evaluation, criteria)
    return await EvaluationRepository(session, viewer).add(evaluation)


async def get_evaluation(
    session: AsyncSession, viewer: User, evaluation_id: uuid.UUID
) -> Evaluation:
    evaluation = await EvaluationRepository(session, viewer).get(evaluation_id)
    if evaluation is None:
        raise not_found(KIND)
    return evaluation


async def update_evaluation(
    session: AsyncSession, viewer: User, evaluation_id: uuid.UUID, changes: EvaluationChanges
) -> Evaluation:
    """Apply a partial update; every rule is checked against the resulting evaluation.

    Nothing is written unless the whole update is valid.
    """
    repository = EvaluationRepository(session, viewer)
    evaluation = await repository.get(evaluation_id, for_update=True)
    if evaluation is None:
        raise not_found(KIND)
    # Validate everything first, then assign: a rejected update leaves the row untouched.
    title = updated(
        evaluation.title,
        changes.title,
        lambda value: rules.validate_title(_required(value, "title")),
    )
    company_name = updated(
        evaluation.company_name,
        changes.company_name,
        lambda value: rules.validate_company_name(_required(value, "companyName")),
    )
    project_type = updated(
        evaluation.project_type,
        changes.project_type,
        lambda value: rules.validate_project_type(_required(value, "projectType")),
    )
    status = updated(
        evaluation.status,
        changes.status,
        lambda value: rules.validate_status(_required(value, "status")),
    )
    notes = updated(evaluation.notes, changes.notes, rules.validate_notes)
    criteria = updated(
        criteria_of(evaluation),
        changes.criteria,
        lambda value: rules.validate_criteria(_required_criteria(value)),
    )
    if changes.status is not KEEP and status != evaluation.status:
        rules.check_completion(status, criteria, field="status")
    elif changes.criteria is not KEEP:
        # Criteria replaced on an evaluation that stays COMPLETED must keep it complete.
        rules.check_completion(status, criteria, field="criteria")

    evaluation.title = title
    evaluation.company_name = company_name
    evaluation.project_type = project_type
    evaluation.status = status
    evaluation.notes = notes
    if changes.criteria is not KEEP:
        _set_criteria(evaluation, criteria)
    return await repository.save(evaluation)


async def delete_evaluation(session: AsyncSession, viewer: User, evaluation_id: uuid.UUID) -> None:
    if not await EvaluationRepository(session, viewer).delete(evaluation_id):
        raise not_found(KIND)


async def list_evaluations(
    session: AsyncSession,
    viewer: User,
    *,
    first: int | None,
    after: str | None,
    status: str | None = None,
    project_type: str | None = None,
    search: str | None = None,
    owner_id: str | None = None,
    order: EvaluationOrder | None = None,
    count: bool = True,
) -> Page[Evaluation]:
    """The evaluations the viewer may read, filtered and ordered (default: newest first);
    counted only with ``count``.

    Only administrators may filter by owner (FORBIDDEN otherwise, whatever the value); everyone
    else always sees only their own.
    """
    owner = None
    if owner_id is not None:
        if not viewer.is_admin:
            raise Forbidden("only administrators may filter by owner", field="filter.ownerId")
        try:
            owner = uuid.UUID(owner_id)
        except ValueError:
            raise InvalidInput("ownerId is not a valid id", field="filter.ownerId") from None
    filter = EvaluationFilter(
        status=None if status is None else rules.validate_status(status),
        project_type=None if project_type is None else rules.validate_project_type(project_type),
        search=rules.validate_search(search),
        owner_id=owner,
    )
    request = page_request(first, after, count=count)
    with cursor_errors():
        return await EvaluationRepository(session, viewer).page(
            request, filter, order or EvaluationOrder()
        )


def owner_page_key(owner_id: uuid.UUID, *, first: int | None, after: str | None) -> ParentPageKey:
    """Validate ``User.evaluations`` arguments up front, so a batch never fails on one bad key."""
    request = page_request(first, after)
    with cursor_errors():
        return EvaluationRepository.page_key(owner_id, request)


async def pages_by_owner(
    session: AsyncSession, viewer: User, keys: Sequence[ParentPageKey]
) -> list[Page[Evaluation]]:
    """Each owner's newest evaluations that the viewer may read, for many owners at once."""
    return await EvaluationRepository(session, viewer).pages_by_owner(keys)


__all__ = [
    "KEEP",
    "EvaluationChanges",
    "EvaluationOrder",
    "ListedColumns",
    "ListedRow",
    "NewEvaluation",
    "OrderField",
    "create_evaluation",
    "criteria_of",
    "delete_evaluation",
    "get_evaluation",
    "list_evaluations",
    "owner_page_key",
    "pages_by_owner",
]


async def list_evaluation_rows(
    on: DriverTarget,
    viewer: User,
    *,
    first: int | None,
    after: str | None,
    count: bool,
    columns: ListedColumns,
) -> Page[ListedRow]:
    """`list_evaluations` with no filter in the default order, as plain rows; see
    `EvaluationRepository.page_rows` for ``columns``."""
    request = page_request(first, after, count=count)
    with cursor_errors():
        return await EvaluationRepository.page_rows(
            on, viewer, request, EvaluationOrder(), columns=columns
        )


def listing_request(first: int | None, after: str | None) -> PageRequest:
    """The page `signed_in_evaluation_rows` reads, checked before anything is: BAD_USER_INPUT
    for a size out of range or a cursor that is not one of the list's."""
    request = page_request(first, after, count=False)
    with cursor_errors():
        EvaluationRepository.check_cursor(request, EvaluationOrder())
    return request


async def signed_in_evaluation_rows(
    on: DriverTarget,
    claims: AccessClaims,
    request: PageRequest,
    *,
    environment: str,
    defaults: FeatureDefaults,
    columns: ListedColumns,
) -> tuple[SignedIn, Page[ListedRow]] | None:
    """The viewer check (`resolve_signed_in`) and `list_evaluation_rows` for that viewer with
    a ``request`` from `listing_request`, in one statement; None when the token's account or
    sign-in session is not live (nothing was listed)."""
    signed_in: SignedInParameters = {
        "user_id": claims.user_id,
        "session_id": claims.session_id,
        "environment": environment,
    }
    found = await EvaluationRepository.signed_in_page_rows(
        on, signed_in, request, EvaluationOrder(), columns=columns
    )
    if found is None:
        return None
    viewer, page = found
    return signed_in_of(viewer, defaults), page
