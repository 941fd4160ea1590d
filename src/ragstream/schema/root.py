"""Root Query / Mutation, assembled from the per-area field classes (one module per area)."""

from __future__ import annotations

import strawberry

from ragstream.schema.chat.fields import ChatMutations, ChatQueries, ChatSubscriptions
from ragstream.schema.documents.fields import (
    DocumentMutations,
    DocumentQueries,
    DocumentSubscriptions,
)
from ragstream.schema.evaluations.fields import EvaluationMutations, EvaluationQueries
from ragstream.schema.flags.fields import FlagMutations, FlagQueries
from ragstream.schema.users.fields import UserMutations, UserQueries


@strawberry.type(description="Read operations.")
class Query(UserQueries, EvaluationQueries, DocumentQueries, ChatQueries, FlagQueries):
    pass


@strawberry.type(description="Write operations.")
class Mutation(UserMutations, EvaluationMutations, DocumentMutations, ChatMutations, FlagMutations):
    pass


@strawberry.type(description="Live updates over the graphql-transport-ws websocket protocol.")
class Subscription(DocumentSubscriptions, ChatSubscriptions):
    pass
