"""The GraphQL schema: types, root operations and the limits every request passes through."""

from __future__ import annotations

from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    DisableIntrospection,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext

from ragstream.schema.errors import ErrorContract
from ragstream.schema.root import Mutation, Query
from ragstream.settings import Settings


class RagstreamSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Logging happens in ErrorContract, which knows which errors are unexpected."""


def build_schema(settings: Settings) -> strawberry.Schema:
    # Factories: Strawberry builds fresh extension instances for every operation; the parser and
    # validation caches are shared module-level LRUs, so they stay warm across requests.
    extensions: list[Any] = [
        ErrorContract,
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: ParserCache(maxsize=512),
        lambda: QueryDepthLimiter(max_depth=settings.max_query_depth),
        lambda: MaxAliasesLimiter(max_alias_count=settings.max_aliases),
        lambda: ValidationCache(maxsize=512),
    ]
    if not settings.introspection_enabled:
        extensions.append(DisableIntrospection)
    return RagstreamSchema(
        query=Query,
        mutation=Mutation,
        extensions=extensions,
        config=StrawberryConfig(disable_field_suggestions=True),
    )


def export_sdl() -> str:
    """The SDL committed as schema.graphql (independent of runtime switches like introspection)."""
    return build_schema(Settings(introspection=True)).as_str() + "\n"
