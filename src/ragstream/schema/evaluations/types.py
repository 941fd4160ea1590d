from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Any, Protocol

import strawberry

from ragstream.domain.evaluations.enums import EvaluationStatus, ProjectType
from ragstream.domain.evaluations.rules import Criterion as CriterionData
from ragstream.schema.context import Info
from ragstream.schema.enums import api_enum
from ragstream.schema.users.types import User, to_user

api_enum(
    ProjectType,
    description="What kind of ERP project an evaluation assesses.",
    values={
        ProjectType.NEW_ERP: "Selecting a first ERP system.",
        ProjectType.ERP_MIGRATION: "Replacing one ERP system with another.",
        ProjectType.ERP_UPGRADE: "Moving to a newer version of the ERP system in use.",
        ProjectType.OTHER: "Anything else.",
    },
)
api_enum(
    EvaluationStatus,
    description="Where an evaluation is in its life.",
    values={
        EvaluationStatus.DRAFT: "Being set up.",
        EvaluationStatus.IN_PROGRESS: "Being assessed.",
        EvaluationStatus.COMPLETED: "Finished: has criteria and every criterion is scored.",
        EvaluationStatus.ARCHIVED: "Kept for reference.",
    },
)


@strawberry.enum(description="What to sort evaluations by.")
class EvaluationOrderField(Enum):
    CREATED_AT = strawberry.enum_value("CREATED_AT", description="Creation time.")
    UPDATED_AT = strawberry.enum_value("UPDATED_AT", description="Time of the last change.")
    TITLE = strawberry.enum_value("TITLE", description="Title, ignoring case.")
    OVERALL_SCORE = strawberry.enum_value(
        "OVERALL_SCORE", description="Overall score; unscored evaluations come last either way."
    )


@strawberry.enum(description="Sort direction.")
class OrderDirection(Enum):
    ASC = strawberry.enum_value("ASC", description="Smallest (or oldest, or A) first.")
    DESC = strawberry.enum_value("DESC", description="Largest (or newest, or Z) first.")


@strawberry.type(description="One weighted criterion of an evaluation.")
class Criterion:
    name: str = strawberry.field(description="What is assessed; unique within the evaluation.")
    weight: float = strawberry.field(description="Relative importance, greater than 0.")
    score: float | None = strawberry.field(description="Assessment from 0 to 5; null if not yet.")
    notes: str | None = strawberry.field(description="Free-text reasoning behind the score.")


async def resolve_owner(root: Evaluation, info: Info) -> User:
    # Batched (one query per response level) and authorized by the users loader.
    return to_user(await info.context.loaders.users.load(root.owner_id))


def resolve_criteria(root: Evaluation) -> list[Criterion]:
    # Decoded only when selected.
    if root.stored_criteria is None:
        raise RuntimeError("the criteria were not read")
    return [to_criterion(CriterionData.from_json(value)) for value in root.stored_criteria]


@strawberry.type(description="A user's structured assessment, e.g. an ERP selection for a company.")
class Evaluation:
    id: strawberry.ID = strawberry.field(description="UUID of the evaluation.")
    title: str = strawberry.field(description="Short name, 1 to 200 characters.")
    company_name: str = strawberry.field(description="The company assessed, 1 to 200 characters.")
    project_type: ProjectType = strawberry.field(description="What kind of project this is.")
    status: EvaluationStatus = strawberry.field(description="Where the evaluation stands.")

    criteria: list[Criterion] = strawberry.field(
        resolver=resolve_criteria, description="The weighted criteria, in order."
    )
    overall_score: float | None = strawberry.field(
        description="Weighted mean of the scored criteria (0 to 5); null when none is scored."
    )
    notes: str | None = strawberry.field(description="Free-text notes.")
    created_at: datetime = strawberry.field(description="When the evaluation was created.")
    updated_at: datetime = strawberry.field(description="When the evaluation last changed.")
    owner: User = strawberry.field(
        resolver=resolve_owner, description="The account that owns the evaluation."
    )
    owner_id: strawberry.Private[uuid.UUID]
    # As stored (JSON); see `resolve_criteria`.
    stored_criteria: strawberry.Private[list[Any] | None]


def to_criterion(data: CriterionData) -> Criterion:
    return Criterion(name=data.name, weight=data.weight, score=data.score, notes=data.notes)


class EvaluationRow(Protocol):
    """What `to_evaluation` reads: an ORM evaluation, or a listed one (plain values)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def owner_id(self) -> uuid.UUID: ...
    @property
    def title(self) -> str: ...
    @property
    def company_name(self) -> str: ...
    @property
    def project_type(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def criteria(self) -> list[Any] | None: ...
    @property
    def overall_score(self) -> float | None: ...
    @property
    def notes(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def updated_at(self) -> datetime: ...


def to_evaluation(row: EvaluationRow) -> Evaluation:
    """A listed row may hold None for what its list did not read (and will not show)."""
    project_type, status = row.project_type, row.status
    return Evaluation(
        id=strawberry.ID(str(row.id)),
        title=row.title,
        company_name=row.company_name,
        project_type=ProjectType(project_type) if project_type is not None else project_type,
        status=EvaluationStatus(status) if status is not None else status,
        stored_criteria=row.criteria,
        overall_score=row.overall_score,
        notes=row.notes,
        created_at=row.created_at,
        updated_at=row.updated_at,
        owner_id=row.owner_id,
    )


@strawberry.input(description="One weighted criterion.")
class CriterionInput:
    name: str = strawberry.field(description="What is assessed, 1 to 100 characters; unique.")
    weight: float = strawberry.field(
        default=1.0, description="Relative importance, greater than 0 (default 1)."
    )
    score: float | None = strawberry.field(
        default=None, description="Assessment from 0 to 5, or null while not assessed."
    )
    notes: str | None = strawberry.field(
        default=None, description="Reasoning, at most 2000 characters."
    )


@strawberry.input(description="A new evaluation, owned by the signed-in account.")
class CreateEvaluationInput:
    title: str = strawberry.field(description="Short name, 1 to 200 characters.")
    company_name: str = strawberry.field(description="The company assessed, 1 to 200 characters.")
    project_type: ProjectType = strawberry.field(
        default=ProjectType.OTHER, description="What kind of project this is (default OTHER)."
    )
    status: EvaluationStatus = strawberry.field(
        default=EvaluationStatus.DRAFT,
        description="Initial status (default DRAFT); COMPLETED needs every criterion scored.",
    )
    notes: str | None = strawberry.field(
        default=None, description="Free-text notes, at most 20000 characters."
    )
    criteria: list[CriterionInput] = strawberry.field(
        default_factory=list, description="Up to 50 criteria with unique names."
    )


@strawberry.input(
    description="Changes to an evaluation; omitted fields stay as they are. Criteria, when "
    "given, replace the whole list."
)
class UpdateEvaluationInput:
    title: str | None = strawberry.field(
        default=strawberry.UNSET, description="New title, 1 to 200 characters."
    )
    company_name: str | None = strawberry.field(
        default=strawberry.UNSET, description="New company name, 1 to 200 characters."
    )
    project_type: ProjectType | None = strawberry.field(
        default=strawberry.UNSET, description="New project type."
    )
    status: EvaluationStatus | None = strawberry.field(
        default=strawberry.UNSET,
        description="New status; COMPLETED needs at least one criterion, all of them scored.",
    )
    notes: str | None = strawberry.field(
        default=strawberry.UNSET, description="New notes; null or blank removes them."
    )
    criteria: list[CriterionInput] | None = strawberry.field(
        default=strawberry.UNSET, description="The new list of criteria (replaces the old one)."
    )


@strawberry.input(description="Which evaluations to list; all given conditions must hold.")
class EvaluationFilter:
    status: EvaluationStatus | None = strawberry.field(
        default=None, description="Only evaluations with this status."
    )
    project_type: ProjectType | None = strawberry.field(
        default=None, description="Only evaluations of this project type."
    )
    search: str | None = strawberry.field(
        default=None,
        description="Case-insensitive text contained in the title or the company name.",
    )
    owner_id: strawberry.ID | None = strawberry.field(
        default=None, description="Only this account's evaluations (administrators only)."
    )


@strawberry.input(description="How to sort evaluations.")
class EvaluationOrder:
    field: EvaluationOrderField = strawberry.field(
        default=EvaluationOrderField.CREATED_AT, description="Sort key (default CREATED_AT)."
    )
    direction: OrderDirection = strawberry.field(
        default=OrderDirection.DESC, description="Sort direction (default DESC)."
    )
