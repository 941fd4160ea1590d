from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, cast

import strawberry

from ragstream.domain.evaluations import service
from ragstream.domain.evaluations.rules import Criterion
from ragstream.resolvers.ids import parse_id
from ragstream.schema.context import Context
from ragstream.schema.types.evaluations import (
    CreateEvaluationInput,
    CriterionInput,
    Evaluation,
    EvaluationFilter,
    EvaluationOrder,
    OrderDirection,
    UpdateEvaluationInput,
    to_evaluation,
)
from ragstream.schema.types.pagination import AfterArg, Connection, FirstArg, to_connection

if TYPE_CHECKING:
    from ragstream.schema.types.users import User

Info = strawberry.Info[Context, None]


def _criteria(values: list[CriterionInput]) -> list[Criterion]:
    return [Criterion(name=c.name, weight=c.weight, score=c.score, notes=c.notes) for c in values]


def _given(value: Any) -> bool:
    return value is not strawberry.UNSET


async def evaluation(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the evaluation.")],
) -> Evaluation:
    viewer = await info.context.viewer()
    async with info.context.transaction() as session:
        row = await service.get_evaluation(session, viewer, parse_id(id, "evaluation"))
    return to_evaluation(row)


async def evaluations(
    info: Info,
    first: FirstArg = None,
    after: AfterArg = None,
    filter: Annotated[
        EvaluationFilter | None, strawberry.argument(description="Conditions to match.")
    ] = None,
    order_by: Annotated[
        EvaluationOrder | None,
        strawberry.argument(description="Sort order (default CREATED_AT DESC)."),
    ] = None,
) -> Connection[Evaluation]:
    viewer = await info.context.viewer()
    conditions = filter or EvaluationFilter()
    order = order_by or EvaluationOrder()
    async with info.context.transaction() as session:
        page = await service.list_evaluations(
            session,
            viewer,
            first=first,
            after=after,
            status=conditions.status.name if conditions.status else None,
            project_type=conditions.project_type.name if conditions.project_type else None,
            search=conditions.search,
            owner_id=None if conditions.owner_id is None else str(conditions.owner_id),
            order=service.EvaluationOrder(
                field=cast(service.OrderField, order.field.name),
                descending=order.direction is OrderDirection.DESC,
            ),
        )
    return to_connection(page, to_evaluation)


async def owner_evaluations(
    user: User, info: Info, first: int | None, after: str | None
) -> Connection[Evaluation]:
    """``User.evaluations``: batched across every user of the response by a DataLoader."""
    key = service.owner_page_key(uuid.UUID(str(user.id)), first=first, after=after)
    page = await info.context.loaders.evaluations_by_owner.load(key)
    return to_connection(page, to_evaluation)


async def create_evaluation(
    info: Info,
    input: Annotated[CreateEvaluationInput, strawberry.argument(description="The evaluation.")],
) -> Evaluation:
    viewer = await info.context.viewer()
    new = service.NewEvaluation(
        title=input.title,
        company_name=input.company_name,
        project_type=input.project_type.name,
        status=input.status.name,
        notes=input.notes,
        criteria=_criteria(input.criteria),
    )
    async with info.context.transaction() as session:
        row = await service.create_evaluation(session, viewer, new)
    return to_evaluation(row)


async def update_evaluation(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the evaluation.")],
    input: Annotated[UpdateEvaluationInput, strawberry.argument(description="Changes.")],
) -> Evaluation:
    viewer = await info.context.viewer()
    keep = service.KEEP
    changes = service.EvaluationChanges(
        title=input.title if _given(input.title) else keep,
        company_name=input.company_name if _given(input.company_name) else keep,
        project_type=(
            (input.project_type.name if input.project_type is not None else None)
            if _given(input.project_type)
            else keep
        ),
        status=(
            (input.status.name if input.status is not None else None)
            if _given(input.status)
            else keep
        ),
        notes=input.notes if _given(input.notes) else keep,
        criteria=(
            (_criteria(input.criteria) if input.criteria is not None else None)
            if _given(input.criteria)
            else keep
        ),
    )
    async with info.context.transaction() as session:
        row = await service.update_evaluation(session, viewer, parse_id(id, "evaluation"), changes)
    return to_evaluation(row)


async def delete_evaluation(
    info: Info,
    id: Annotated[strawberry.ID, strawberry.argument(description="UUID of the evaluation.")],
) -> strawberry.ID:
    viewer = await info.context.viewer()
    evaluation_id = parse_id(id, "evaluation")
    async with info.context.transaction() as session:
        await service.delete_evaluation(session, viewer, evaluation_id)
    return strawberry.ID(str(evaluation_id))
