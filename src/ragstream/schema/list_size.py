"""A bound on how many list items one operation may ask for, nested lists multiplied.

Depth alone does not bound a response: `Evaluation.owner -> User.evaluations` is recursive, so
three nested `evaluations(first: 100)` fit in depth 10 and ask for a million rows. Before any
resolver runs, every field with a `first` (or `limit`) argument is counted as that many items,
multiplied by the items of the lists around it, with variable values and argument defaults applied
and each fragment measured once.
A `first` above the page-size cap counts as the cap: the resolver itself rejects such a value with
BAD_USER_INPUT on `first`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLField,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
)
from strawberry.extensions import SchemaExtension

from ragstream.domain.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ragstream.schema.fragments import FragmentMeasures

SIZE_ARGUMENTS = ("first", "limit")


class _Estimate:
    """Counts the list items of one operation; linear in the multiplier, so a fragment's count
    is computed once and scaled, however often it is spread."""

    def __init__(
        self,
        schema: GraphQLSchema,
        document: DocumentNode,
        operation: OperationDefinitionNode,
        variables: Mapping[str, Any],
    ) -> None:
        self.schema = schema
        self.fragments = FragmentMeasures(document, 0)
        self.variables = dict(variables)
        # Whether a count read a variable: only an estimate that did not may be reused.
        self.read_variables = False
        for definition in operation.variable_definitions or ():
            name = definition.variable.name.value
            if name not in self.variables and isinstance(definition.default_value, IntValueNode):
                self.variables[name] = int(definition.default_value.value)

    def fragment(self, name: str) -> int:
        return self.fragments.measure(name, self._fragment)

    def _fragment(self, definition: FragmentDefinitionNode) -> int:
        return self.selection_set(
            definition.selection_set, self.schema.get_type(definition.type_condition.name.value)
        )

    def selection_set(
        self, selection_set: SelectionSetNode | None, parent: GraphQLNamedType | None
    ) -> int:
        total = 0
        for selection in selection_set.selections if selection_set else ():
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                inner = self.schema.get_type(condition.name.value) if condition else parent
                total += self.selection_set(selection.selection_set, inner)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value)
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType | None) -> int:
        if not isinstance(parent, GraphQLObjectType | GraphQLInterfaceType):
            return 0
        definition = parent.fields.get(node.name.value)
        if definition is None:
            return 0  # unknown field: graphql-core's validation reports it
        inner = self.selection_set(node.selection_set, get_named_type(definition.type))
        size = self.size(node, definition)
        return inner if size is None else size * (1 + inner)

    def size(self, node: FieldNode, definition: GraphQLField) -> int | None:
        """Items a list field returns, or None when it is not a sized list."""
        for name in SIZE_ARGUMENTS:
            argument = definition.args.get(name)
            if argument is None:
                continue
            value: Any = argument.default_value
            for given in node.arguments or ():
                if given.name.value != name:
                    continue
                if isinstance(given.value, IntValueNode):
                    value = int(given.value.value)
                elif isinstance(given.value, VariableNode):
                    self.read_variables = True
                    value = self.variables.get(given.value.name.value)
                else:
                    value = None
            if value is None:
                # A null (written, or a null or missing variable) stands for the default.
                value = argument.default_value
            if not isinstance(value, int) or isinstance(value, bool):
                value = DEFAULT_PAGE_SIZE if name == "first" else 1
            size: int = min(value, MAX_PAGE_SIZE) if name == "first" else value
            return max(size, 0)
        return None


# Estimates that read no variable, by schema and document: the parser's cache hands back the
# same document object for the same text, and an entry keeps both alive, so their ids are not
# reused while it is stored.
_ESTIMATES: dict[tuple[int, int], tuple[GraphQLSchema, DocumentNode, int]] = {}
_ESTIMATES_KEPT = 512


def estimate_list_items(
    schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any] | None
) -> int:
    """The most list items any operation of ``document`` could return."""
    key = (id(schema), id(document))
    kept = _ESTIMATES.get(key)
    if kept is not None and kept[0] is schema and kept[1] is document:
        return kept[2]
    worst = 0
    fixed = True
    for operation in document.definitions:
        if isinstance(operation, OperationDefinitionNode):
            estimate = _Estimate(schema, document, operation, variables or {})
            root = schema.get_root_type(operation.operation)
            worst = max(worst, estimate.selection_set(operation.selection_set, root))
            fixed = fixed and not estimate.read_variables
    if fixed:
        if len(_ESTIMATES) >= _ESTIMATES_KEPT:
            del _ESTIMATES[next(iter(_ESTIMATES))]
        _ESTIMATES[key] = (schema, document, worst)
    return worst


class ListSizeLimit(SchemaExtension):
    """Refuses an operation whose lists could add up to more than ``max_items`` items.

    List it after the validation cache: its hook sees a document that passed validation (a
    document with errors keeps those errors) and refuses the operation before execution.
    """

    def __init__(self, *, max_items: int) -> None:
        self.max_items = max_items

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and not context.pre_execution_errors:
            items = estimate_list_items(
                context.schema._schema, context.graphql_document, context.variables
            )
            if items > self.max_items:
                # Pre-execution errors end the operation before any resolver runs.
                context.pre_execution_errors = [
                    GraphQLError(
                        f"this operation could return up to {items} list items, more than "
                        f"the {self.max_items} allowed; ask for fewer with `first`",
                        extensions={"field": "first"},
                    )
                ]
        yield
