"""The GraphQL schema: types, root operations and the limits every request passes through."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import DisableIntrospection, MaxTokensLimiter
from strawberry.schema.config import StrawberryConfig
from strawberry.types import ExecutionContext, ExecutionResult

from ragstream.domain.errors import DomainError
from ragstream.observability.tracing import tracing_wanted
from ragstream.persisted import persisted_of, wants_resolving
from ragstream.schema.compiled import CompiledReadsExecutor
from ragstream.schema.errors import ErrorContract, shape_result
from ragstream.schema.limits import Limits, ParserCache, QueryLimits, ValidationCache
from ragstream.schema.list_size import ListSizeLimit
from ragstream.schema.observed import ObserveOperations
from ragstream.schema.root import Mutation, Query, Subscription
from ragstream.schema.strings import StringGuard
from ragstream.settings import Settings


class RagstreamSchema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        """Logging happens in ErrorContract, which knows which errors are unexpected."""

    async def execute(self, *args: Any, **kwargs: Any) -> ExecutionResult:
        call = _EXECUTE.bind(self, *args, **kwargs)
        query, refused = _trusted(
            call.arguments.get("query"),
            call.arguments.get("context_value"),
            call.arguments.get("operation_extensions"),
        )
        if refused is not None:
            return refused
        call.arguments["query"] = query
        result = await super().execute(*call.args[1:], **call.kwargs)
        # An exception inside an extension hook ends the operation before ErrorContract sees the
        # result; such errors are shaped (and masked) here instead.
        shape_result(result, call.arguments.get("context_value"))
        return result

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        # Websocket operations and HTTP streams: the same trusted-document rules as execute.
        call = _STREAM.bind(self, *args, **kwargs)
        query, refused = _trusted(
            call.arguments.get("query"),
            call.arguments.get("context_value"),
            call.arguments.get("operation_extensions"),
        )
        if refused is not None:
            return _single(refused)
        call.arguments["query"] = query
        stream: AsyncGenerator[Any, None] = await super().stream(*call.args[1:], **call.kwargs)
        return stream


def _trusted(
    query: str | None, context: Any, extensions: dict[str, Any] | None
) -> tuple[str | None, ExecutionResult | None]:
    """The document to run under the trusted-document rules, or the refusal to answer."""
    persisted = persisted_of(context)
    if persisted is None or not wants_resolving(persisted, extensions):
        return query, None
    try:
        return persisted.resolve(query, extensions), None
    except DomainError as exc:
        error = GraphQLError(exc.message, extensions={"code": exc.code})
        return None, ExecutionResult(data=None, errors=[error])


async def _single(result: ExecutionResult) -> AsyncGenerator[Any, None]:
    yield result


# Strawberry's own signature, read rather than restated, to find the context among any arguments.
_EXECUTE = inspect.signature(strawberry.Schema.execute)
_STREAM = inspect.signature(strawberry.Schema.stream)


def build_schema(settings: Settings) -> strawberry.Schema:
    # Factories: Strawberry builds fresh extension instances for every operation; the parser and
    # validation caches are shared module-level LRUs, so they stay warm across requests.
    limits = Limits(
        max_depth=settings.max_query_depth,
        max_aliases=settings.max_aliases,
        max_directives=settings.max_directives,
        max_fields=settings.max_fields,
    )
    observe = settings.observe_operations or tracing_wanted(settings)
    extensions: list[Any] = [
        # First: its operation hook ends last. Observing adds no extension of its own: each
        # one listed costs a set of hooks per operation.
        ObserveOperations if observe else ErrorContract,
        lambda: MaxTokensLimiter(max_token_count=settings.max_tokens),
        lambda: ParserCache(maxsize=512),
        StringGuard,
        lambda: QueryLimits(limits),
        lambda: ValidationCache(maxsize=512),
        # After validation: measures only documents that passed it.
        lambda: ListSizeLimit(max_items=settings.max_list_items),
    ]
    if not settings.introspection_enabled:
        extensions.append(DisableIntrospection)
    return RagstreamSchema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        extensions=extensions,
        config=StrawberryConfig(disable_field_suggestions=True),
        # The hottest reads run from a compiled plan; subscription events are rendered from a
        # plan made once per subscription.
        execution_context_class=CompiledReadsExecutor,
    )


def export_sdl() -> str:
    """The SDL committed as schema.graphql (independent of runtime switches like introspection)."""
    return build_schema(Settings(introspection=True)).as_str() + "\n"
