"""Query limits checked during validation, before any resolver runs: depth, aliases, directives.

ragstream has its own rule instead of Strawberry's QueryDepthLimiter / MaxAliasesLimiter because
those walk a fragment again for every spread of it (fragments that each spread the next one twice
cost 2**n), fail with an internal KeyError on an unknown fragment, and build a new rule class per
request, which makes every validation-cache lookup miss. Here each fragment is measured once, an
unknown fragment counts as empty (graphql-core reports it as an ordinary validation error), and
the rule class is built once per schema.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
    ValidationRule,
)
from strawberry.extensions import AddValidationRules
from strawberry.extensions import ParserCache as StrawberryParserCache


@dataclass(frozen=True)
class Cost:
    """What a selection set adds up to; ``depth`` counts nested selection sets below it."""

    depth: int = 0
    aliases: int = 0
    directives: int = 0

    def nested(self) -> Cost:
        return Cost(self.depth + 1, self.aliases, self.directives)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            max(self.depth, other.depth),
            self.aliases + other.aliases,
            self.directives + other.directives,
        )


class _Measure:
    """Measures one document; every fragment is measured once, however often it is spread."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.done: dict[str, Cost] = {}
        self.in_progress: set[str] = set()

    def fragment(self, name: str) -> Cost:
        if name in self.done:
            return self.done[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.in_progress:
            # Unknown and cyclic fragments are reported by graphql-core's own rules.
            return Cost()
        self.in_progress.add(name)
        cost = self.selection_set(definition.selection_set)
        cost = Cost(cost.depth, cost.aliases, cost.directives + len(definition.directives or ()))
        self.in_progress.discard(name)
        self.done[name] = cost
        return cost

    def selection_set(self, selection_set: SelectionSetNode | None) -> Cost:
        total = Cost()
        for selection in selection_set.selections if selection_set else ():
            own = Cost(directives=len(selection.directives or ()))
            if isinstance(selection, FieldNode):
                own = own + Cost(aliases=1 if selection.alias else 0)
                # Introspection is measured by its own switch (off in production), not by depth.
                if selection.selection_set and not selection.name.value.startswith("__"):
                    own = own + self.selection_set(selection.selection_set).nested()
            elif isinstance(selection, FragmentSpreadNode):
                own = own + self.fragment(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                own = own + self.selection_set(selection.selection_set)
            total = total + own
        return total


def query_limits_rule(
    *, max_depth: int, max_aliases: int, max_directives: int
) -> type[ValidationRule]:
    """A validation rule class enforcing the limits; build it once and reuse it."""

    class QueryLimits(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            measure = _Measure(context.document)
            for operation in context.document.definitions:
                if isinstance(operation, OperationDefinitionNode):
                    self._check(context, operation, measure)

        @staticmethod
        def _check(
            context: ValidationContext, operation: OperationDefinitionNode, measure: _Measure
        ) -> None:
            cost = measure.selection_set(operation.selection_set)
            name = operation.name.value if operation.name else "anonymous"
            # Depth counts selection sets below the root: `{ me { id } }` has depth 1.
            if cost.depth > max_depth:
                context.report_error(
                    GraphQLError(
                        f"'{name}' exceeds maximum operation depth of {max_depth}", operation
                    )
                )
            if cost.aliases > max_aliases:
                context.report_error(
                    GraphQLError(f"{max_aliases} aliases allowed at most", operation)
                )
            directives = cost.directives + len(operation.directives or ())
            if directives > max_directives:
                context.report_error(
                    GraphQLError(f"{max_directives} directives allowed at most", operation)
                )

    return QueryLimits


class QueryLimits(AddValidationRules):
    """Adds the limits rule; pass one instance's ``rule`` around so caches keep hitting."""

    def __init__(self, rule: type[ValidationRule]) -> None:
        super().__init__([rule])


class ParserCache(StrawberryParserCache):
    """Strawberry's parser cache, minus one flaw: it parses inside the parse hook, so a syntax
    error (or the token limit) escaped the operation and reached the client unshaped. Here a
    document that does not parse is left to the schema, which parses it again and reports the
    error as an ordinary pre-execution error."""

    def on_parse(self) -> Iterator[None]:
        context = self.execution_context
        with contextlib.suppress(GraphQLError):
            context.graphql_document = self.cached_parse_document(
                context.query, **context.parse_options
            )
        yield
