"""Root fields for evaluations. Every one needs a signed-in account; the rest is per row."""

from __future__ import annotations

import strawberry

from ragstream.resolvers import evaluations
from ragstream.schema.evaluations.types import Evaluation
from ragstream.schema.pagination import Connection
from ragstream.schema.permissions import signed_in


@strawberry.type
class EvaluationQueries:
    evaluation: Evaluation = strawberry.field(
        resolver=evaluations.evaluation,
        description="One evaluation: your own, or anyone's for an admin.",
        permission_classes=signed_in,
    )
    evaluations: Connection[Evaluation] = strawberry.field(
        resolver=evaluations.evaluations,
        description="Your evaluations (everyone's for an admin), newest first unless ordered.",
        permission_classes=signed_in,
    )


@strawberry.type
class EvaluationMutations:
    create_evaluation: Evaluation = strawberry.field(
        resolver=evaluations.create_evaluation,
        description="Create an evaluation owned by you.",
        permission_classes=signed_in,
    )
    update_evaluation: Evaluation = strawberry.field(
        resolver=evaluations.update_evaluation,
        description="Change an evaluation; omitted fields stay, criteria are replaced as a whole.",
        permission_classes=signed_in,
    )
    delete_evaluation: strawberry.ID = strawberry.field(
        resolver=evaluations.delete_evaluation,
        description="Delete an evaluation; returns its id.",
        permission_classes=signed_in,
    )
