from __future__ import annotations

from typing import Annotated, cast

import strawberry

from ragstream.domain.evaluations import service
from ragstream.domain.evaluations.rules import Criterion
from ragstream.resolvers.ids import parse_id
from ragstream.resolvers.inputs import keep_unset
from ragstream.schema.context import Info
from ragstream.schema.evaluations.types import (
    CreateEvaluationInput,
    CriterionInput,
    Evaluation,
    EvaluationFilter,
    EvaluationOrder,
    OrderDirection,
    UpdateEvaluationInput,
    to_evaluation,
)
from ragstream.schema.pagination import AfterArg, Connection, FirstArg, to_connection
from ragstream.schema.selection import selects


def _criteria(values: list[CriterionInput]) -> list[Criterion]:
    return [Criterion(name=c.name, weight=c.weight, score=c.score, notes=c.notes) for c in values]


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
            status=conditions.status,
            project_type=conditions.project_type,
            search=conditions.search,
            owner_id=None if conditions.owner_id is None else str(conditions.owner_id),
            order=service.EvaluationOrder(
                field=cast(service.OrderField, order.field.name),
                descending=order.direction is OrderDirection.DESC,
            ),
            count=selects(info, "totalCount"),
        )
    return to_connection(page, to_evaluation)


async def create_evaluation(
    info: Info,
    input: Annotated[CreateEvaluationInput, strawberry.argument(description="The evaluation.")],
) -> Evaluation:
    viewer = await info.context.viewer()
    new = service.NewEvaluation(
        title=input.title,
        company_name=input.company_name,
        project_type=input.project_type,
        status=input.status,
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
    changes = service.EvaluationChanges(
        title=keep_unset(input.title),
        company_name=keep_unset(input.company_name),
        project_type=keep_unset(input.project_type),
        status=keep_unset(input.status),
        notes=keep_unset(input.notes),
        criteria=keep_unset(input.criteria, _criteria),
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
