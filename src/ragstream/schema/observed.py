"""The error contract, observing every GraphQL operation as well: its metrics, log line and span.

An HTTP operation's fields go into its request's line (see logs.RequestLogMiddleware); a
websocket operation gets a line of its own.

A subclass of ErrorContract that the schema lists in its place, rather than an extension of its
own: Strawberry sets up every hook of every listed extension for each operation, which cost more
than the counting itself. Its operation hook ends last, once the errors have their codes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from graphql import GraphQLError, OperationDefinitionNode

from ragstream.observability.logs import OPERATION_KEY, OperationLine, log_operation
from ragstream.observability.metrics import Metrics
from ragstream.observability.tracing import Tracing, current_span
from ragstream.schema.errors import ErrorContract

MAX_LOGGED_NAME = 100


def error_codes(errors: list[GraphQLError] | None) -> list[str]:
    return [str((e.extensions or {}).get("code", "INTERNAL_SERVER_ERROR")) for e in errors or ()]


class ObserveOperations(ErrorContract):
    """The error contract, and the duration, outcome and error codes of each operation (a
    subscription: its lifetime).

    Runs on every request: what it needs from the context is read once per operation.
    """

    _started = 0.0
    _streamed = False
    _subscription = False
    _accepted = False  # parsed and validated (every limit included)
    _codes: list[str] | None = None
    _metrics: Metrics = Metrics()
    _log_requests = False
    _seen: tuple[str, str | None] | None = None  # its type and name, once validation passed

    def on_operation(self) -> Iterator[None]:
        self._started = time.perf_counter()
        self._codes = []
        state = getattr(self.execution_context.context, "state", None)
        if state is not None:
            self._metrics = state.metrics
            self._log_requests = state.settings.log_requests
        tracing: Tracing | None = getattr(state, "tracing", None)
        if tracing is None or not tracing.enabled:
            try:
                yield
                self._apply()
            finally:
                self._finish()
            return
        with current_span(tracing, "graphql.operation") as span:
            try:
                yield
                self._apply()
            finally:
                kind, name = self._finish()
                self._describe(span, kind, name)

    def _describe(self, span: Any, kind: str, name: str | None) -> None:
        span.update_name(f"graphql.{kind} {name or 'anonymous'}")
        span.set_attribute("graphql.operation.type", kind)
        span.set_attribute("graphql.operation.name", name or "")
        if self._codes:
            span.set_attribute("graphql.error.codes", list(self._codes))

    def on_validate(self) -> Iterator[None]:
        yield
        # The last validation hook to end: every other one has had its say.
        self._accepted = not self.execution_context.pre_execution_errors
        if self._accepted:
            self._seen = self._operation()
            if self._seen[0] == "subscription":
                self._subscription = True
                self._metrics.subscription(1)

    def on_stream_result(self, result: Any) -> Iterator[None]:
        self._apply_to_streamed(result)
        self._streamed = True
        self._count(error_codes(getattr(result, "errors", None)))
        yield

    def _count(self, codes: list[str]) -> None:
        assert self._codes is not None
        for code in codes:
            self._metrics.error(code)
        self._codes.extend(codes)

    def _operation(self) -> tuple[str, str | None]:
        """The operation's type ("unknown" when the document names none) and name."""
        context = self.execution_context
        name: object = context.operation_name  # the one asked for, else the first one's
        kind = "unknown"
        for definition in context.graphql_document.definitions if context.graphql_document else ():
            if isinstance(definition, OperationDefinitionNode) and (
                name is None or (definition.name is not None and definition.name.value == name)
            ):
                kind = definition.operation.value
                break
        return kind, name if isinstance(name, str) else None  # a request may send anything

    def _finish(self) -> tuple[str, str | None]:
        """Counts and logs the operation; returns its type and name."""
        context = self.execution_context
        metrics = self._metrics
        if self._subscription:
            metrics.subscription(-1)
        rejected = not self._accepted
        if not self._streamed:
            # Strawberry also files execution errors as pre-execution ones; either list will do.
            errors = context.pre_execution_errors
            if not errors and context.result is not None:
                errors = context.result.errors
            if errors:
                self._count(error_codes(errors))
        outcome = "rejected" if rejected else ("error" if self._codes else "ok")
        seconds = time.perf_counter() - self._started
        kind, name = self._seen or self._operation()
        if metrics.enabled:
            metrics.operation(
                "-" if rejected else metrics.operation_label(name), kind, outcome, seconds
            )
        if self._log_requests:
            self._log(kind, name, outcome, seconds)
        return kind, name

    def _log(self, kind: str, name: str | None, outcome: str, seconds: float) -> None:
        context = self.execution_context.context
        operation = operation_line(context, kind, name, outcome, self._codes or [])
        if context.is_websocket:
            log_operation(operation, seconds)
        else:
            context.request.scope.setdefault("state", {})[OPERATION_KEY] = operation


def operation_line(
    context: Any, kind: str, name: str | None, outcome: str, codes: list[str]
) -> OperationLine:
    """An operation's fields for its log line (the viewer's id only from a valid token)."""
    claims = None if context.token_invalid else context.claims
    return (
        (name or "")[:MAX_LOGGED_NAME] or None,
        kind,
        outcome,
        codes,
        claims.user_id if claims is not None else None,  # made a string with the line
    )
