"""The error contract, applied in one place: codes for domain errors, masks for everything else."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from strawberry.extensions import SchemaExtension

from ragstream.domain.errors import DomainError

logger = logging.getLogger("ragstream.errors")

MASKED_MESSAGE = "Internal server error"
SERVER_BUSY_MESSAGE = "the server is busy; try again in a moment"
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?", re.DOTALL)


def strip_suggestions(message: str) -> str:
    """No "Did you mean ...": the schema is not enumerable through error messages."""
    return _SUGGESTION.sub("", message)


def shape_error(error: GraphQLError, request_id: str | None) -> GraphQLError:
    if error.original_error is None and "code" in (error.extensions or {}):
        return error  # already shaped
    original = error.original_error
    while isinstance(original, GraphQLError) and original.original_error is not None:
        original = original.original_error
    if isinstance(original, DomainError):
        # The code comes last: a domain error's own extensions never replace it.
        extensions: dict[str, Any] = {**original.extensions, "code": original.code}
        if original.field is not None:
            extensions["field"] = original.field
        return _rebuild(error, original.message, extensions)
    if isinstance(original, PoolTimeout | TimeoutError):
        # Every pooled connection stayed busy for the pool timeout, or a new one could not be
        # opened in that time (asyncpg's connect timeout): a clean, retryable answer.
        logger.warning("database pool exhausted (request %s)", request_id)
        return _rebuild(
            error,
            SERVER_BUSY_MESSAGE,
            {
                "code": "RATE_LIMITED",
                "reason": "SERVER_BUSY",
                "retryAfterSeconds": 1,
                "resetAt": None,
                "requestId": request_id,
            },
        )
    if original is None or isinstance(original, GraphQLError):
        # Parse, validation and input-coercion errors: the request itself is wrong.
        extensions = {"code": "BAD_USER_INPUT", **(error.extensions or {})}
        return _rebuild(error, strip_suggestions(error.message), extensions)
    logger.error(
        "unexpected error (request %s) at %s",
        request_id,
        ".".join(str(p) for p in error.path or ()),
        exc_info=original,
    )
    return _rebuild(
        error, MASKED_MESSAGE, {"code": "INTERNAL_SERVER_ERROR", "requestId": request_id}
    )


def _rebuild(error: GraphQLError, message: str, extensions: dict[str, Any]) -> GraphQLError:
    return GraphQLError(
        message,
        nodes=error.nodes,
        source=error.source,
        positions=error.positions,
        path=error.path,
        original_error=None,
        extensions=extensions,
    )


def _request_id(context: Any) -> str | None:
    return getattr(context, "request_id", None)


def shape_result(
    result: Any, context: Any, shaped: dict[GraphQLError, GraphQLError] | None = None
) -> None:
    """Shape every error of ``result`` in place (idempotent).

    ``shaped`` maps errors already shaped to their shaped form: the same error can reach the
    contract in two results (a websocket operation's streamed result and its final one) and is
    then logged once and shaped the same way both times. GraphQLError hashes by identity.
    """
    errors = getattr(result, "errors", None)
    if errors:
        request_id = _request_id(context)
        result.errors = [_shape_once(e, request_id, shaped) for e in errors]


def _shape_once(
    error: GraphQLError,
    request_id: str | None,
    shaped: dict[GraphQLError, GraphQLError] | None,
) -> GraphQLError:
    if shaped is None:
        return shape_error(error, request_id)
    if error not in shaped:
        shaped[error] = shape_error(error, request_id)
    return shaped[error]


class ErrorContract(SchemaExtension):
    """Rewrites every error of a result: after an HTTP operation, and for each result a websocket
    operation streams (those are sent before the operation hook resumes).

    Listed first, so its hooks end last. With metrics, request lines or traces on, the schema
    lists ObserveOperations (a subclass that also observes the operation) in its place.
    """

    # One instance per operation (the schema lists the class), so this lives as long as it.
    _shaped_errors: dict[GraphQLError, GraphQLError] | None = None

    def _shaped(self) -> dict[GraphQLError, GraphQLError]:
        if self._shaped_errors is None:
            self._shaped_errors = {}
        return self._shaped_errors

    def _apply(self) -> None:
        context = self.execution_context.context
        shape_result(self.execution_context.result, context, self._shaped())
        pre = self.execution_context.pre_execution_errors
        if pre:
            request_id = _request_id(context)
            self.execution_context.pre_execution_errors = [
                _shape_once(e, request_id, self._shaped()) for e in pre
            ]

    def on_operation(self) -> Iterator[None]:
        yield
        self._apply()

    def _apply_to_streamed(self, result: Any) -> None:
        shape_result(result, self.execution_context.context, self._shaped())

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._apply_to_streamed(result)
        yield
