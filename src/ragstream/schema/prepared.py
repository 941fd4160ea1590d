"""Prepared reads: a repeated HTTP query answered from its plan without the operation pipeline.

A frontend sends the same few documents over and over, and for the compiled reads (see
`compiled.py`) most of a request's time goes to what surrounds the plan: Strawberry's HTTP view,
a fresh set of schema extensions per operation, parsing and validation looked up in their caches,
graphql-core building its execution. None of that can change its verdict for a document it has
already accepted: parsing, validation, the token, depth, alias and field limits and the check of
string literals depend on the document's text alone.

So once a POST request with a given document and operation name went through the whole pipeline
and was answered from a plan with no error, that pair is *prepared*: the document is kept,
parsed, with its plan. The next request with the same text and name skips the pipeline. What
depends on the request is still done for every request, the same way:

- the variables: checked for text PostgreSQL cannot store, coerced against the operation's
  variable definitions, and the list-size limit estimated with them;
- the viewer check, the reads and the rendering: the plan itself (`run_plan`);
- the operation's metrics and its request-log fields, as `ObserveOperations` records them.

Whenever anything would not end in plain data — a variable refused, a list too large, an
error while reading (an expired token, a bad cursor, a database failure), the plan giving way
to execution — nothing is answered here: the request goes through the pipeline, which reports
it exactly as it always does. The prepared path only ever answers what the pipeline would answer
with data and no error, in the same bytes. Trusted-document modes, tracing, extensions in the
request body and streaming transports always take the pipeline.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLSchema,
    OperationType,
    VariableDefinitionNode,
    parse,
)
from graphql.execution.collect_fields import FieldDetails, collect_fields
from graphql.execution.values import VariableValues, get_variable_values
from graphql.pyutils import Path

from ragstream.observability.logs import OPERATION_KEY
from ragstream.schema.compiled import CompiledReadsExecutor, Plan, plan_for, run_plan
from ragstream.schema.context import Context
from ragstream.schema.list_size import estimate_list_items
from ragstream.schema.observed import operation_line
from ragstream.schema.strings import unstorable_field

_KEPT = 256
# Longer documents are not kept: each entry keeps its text and its parsed document alive.
_MAX_QUERY_CHARS = 16 * 1024

Key = tuple[str, str | None]


class GiveWay(Exception):
    """The prepared path cannot answer this request; the pipeline does."""


@dataclass(frozen=True)
class Prepared:
    document: DocumentNode
    variable_definitions: tuple[VariableDefinitionNode, ...]
    operation_name: str | None  # as the request named it
    name: str | None  # the operation's name, for metrics and the log line
    plan: Plan


def request_key(body: object) -> tuple[Key, dict[str, Any] | None] | None:
    """The (document, operation name) of a decoded body, with its variables, when the body is
    a single operation the prepared path may answer (nothing else in it)."""
    if not isinstance(body, dict) or not body.keys() <= {"query", "variables", "operationName"}:
        return None
    query = body.get("query")
    name = body.get("operationName")
    variables = body.get("variables")
    if not isinstance(query, str) or len(query) > _MAX_QUERY_CHARS:
        return None
    if not isinstance(name, str | None) or not isinstance(variables, dict | None):
        return None
    return (query, name), variables


class PreparedReads:
    """The prepared documents of one schema (and so of one server's settings)."""

    def __init__(self, schema: GraphQLSchema, *, max_list_items: int) -> None:
        self.schema = schema
        self.max_list_items = max_list_items
        query_type = schema.query_type
        assert query_type is not None
        self.query_type: GraphQLObjectType = query_type
        self._kept: OrderedDict[Key, Prepared] = OrderedDict()
        self.answered = 0  # requests answered here

    def get(self, key: Key) -> Prepared | None:
        prepared = self._kept.get(key)
        if prepared is not None:
            self._kept.move_to_end(key)
        return prepared

    def learn(self, key: Key, variables: dict[str, Any] | None) -> None:
        """Keep a document the pipeline has just answered from its plan, data and no error."""
        if key in self._kept:
            return
        query, operation_name = key
        document = parse(query)
        executor = CompiledReadsExecutor.build(
            self.schema, document, raw_variable_values=variables, operation_name=operation_name
        )
        if isinstance(executor, list) or executor.operation.operation is not OperationType.QUERY:
            return
        assert isinstance(executor, CompiledReadsExecutor)
        collected = collect_fields(
            self.schema,
            executor.fragments,
            executor.variable_values,
            self.query_type,
            executor.operation,
        )
        if collected.new_defer_usages:
            return
        plan = plan_for(executor, self.query_type, collected.grouped_field_set)
        if plan is None:
            return
        node = executor.operation.name
        name = operation_name if operation_name is not None else (node.value if node else None)
        definitions = tuple(executor.operation.variable_definitions or ())
        self._kept[key] = Prepared(document, definitions, operation_name, name, plan)
        if len(self._kept) > _KEPT:
            self._kept.popitem(last=False)

    async def answer(
        self, prepared: Prepared, context: Context, variables: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The operation's data; raises GiveWay (or what reading raised) when the pipeline
        must answer instead."""
        started = time.perf_counter()
        if variables and any(
            unstorable_field(value, name) is not None for name, value in variables.items()
        ):
            raise GiveWay("unstorable text")
        items = estimate_list_items(self.schema, prepared.document, variables)
        if items > self.max_list_items:
            raise GiveWay("too many list items")
        values = get_variable_values(
            self.schema, prepared.variable_definitions, variables or {}, max_errors=1
        )
        if isinstance(values, list):
            raise GiveWay("variables refused")
        # Data only when every root was read and rendered; an error raises.
        operation = _Operation(context, values)
        data = await run_plan(operation, prepared.plan, self.query_type, _give_way)
        _observe(context, prepared.name, time.perf_counter() - started)
        self.answered += 1
        return data


class _Operation:
    """What running a plan reads of its operation (see compiled.PlanOperation), without an
    executor: an error while reading is reported by the pipeline, which runs again."""

    __slots__ = ("context_value", "variable_values")

    def __init__(self, context: Context, variable_values: VariableValues) -> None:
        self.context_value = context
        self.variable_values = variable_values

    def handle_field_error(
        self,
        raw_error: Exception,
        return_type: GraphQLOutputType,
        field_details_list: list[FieldDetails],
        path: Path,
    ) -> None:
        """Nothing to locate: run_plan raises the error, and the pipeline answers."""


def _give_way() -> Any:
    raise GiveWay("the plan gave way to execution")


def _observe(context: Context, name: str | None, seconds: float) -> None:
    """What ObserveOperations records for an operation that ended with data and no error."""
    state = context.state
    metrics = state.metrics
    if metrics.enabled:
        metrics.operation(metrics.operation_label(name), "query", "ok", seconds)
    if state.settings.log_requests:
        scope_state = context.request.scope.setdefault("state", {})
        scope_state[OPERATION_KEY] = operation_line(context, "query", name, "ok", [])
