"""Query limits checked before graphql-core's validation, so no resolver runs for a document over a
limit: depth, aliases, directives and the number of field selections.

ragstream has its own check instead of Strawberry's QueryDepthLimiter / MaxAliasesLimiter because
those walk a fragment again for every spread of it (fragments that each spread the next one twice
cost 2**n), fail with an internal KeyError on an unknown fragment, and build a new rule class per
request, which makes every validation-cache lookup miss. Here each fragment is measured once and an
unknown fragment counts as empty (graphql-core reports it as an ordinary validation error).

A document over a limit gets the limit errors only: graphql-core's validation is skipped, since
some of its rules cost time quadratic in the number of fields (hundreds of repeated fields took
seconds) and a flood of duplicate directives would otherwise come back as a hundred errors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from strawberry.extensions import ParserCache as StrawberryParserCache
from strawberry.extensions import SchemaExtension
from strawberry.extensions import ValidationCache as StrawberryValidationCache

from ragstream.schema.fragments import FragmentMeasures, PerDocument


@dataclass(frozen=True)
class Cost:
    """What a selection set adds up to; ``depth`` counts nested selection sets below it."""

    depth: int = 0
    aliases: int = 0
    directives: int = 0
    fields: int = 0

    def nested(self) -> Cost:
        return Cost(self.depth + 1, self.aliases, self.directives, self.fields)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            max(self.depth, other.depth),
            self.aliases + other.aliases,
            self.directives + other.directives,
            self.fields + other.fields,
        )


class _Measure:
    """Measures one document; every fragment is measured once, however often it is spread."""

    def __init__(self, document: DocumentNode) -> None:
        self.fragments = FragmentMeasures(document, Cost())

    def fragment(self, name: str) -> Cost:
        return self.fragments.measure(name, self._fragment)

    def _fragment(self, definition: FragmentDefinitionNode) -> Cost:
        cost = self.selection_set(definition.selection_set)
        return cost + Cost(directives=len(definition.directives or ()))

    def selection_set(self, selection_set: SelectionSetNode | None) -> Cost:
        total = Cost()
        for selection in selection_set.selections if selection_set else ():
            own = Cost(directives=len(selection.directives or ()))
            if isinstance(selection, FieldNode):
                own = own + Cost(aliases=1 if selection.alias else 0, fields=1)
                inner = self.selection_set(selection.selection_set)
                if selection.name.value.startswith("__"):
                    # Introspection has its own switch (off in production); its standard query
                    # nests deeper than any API query needs, so it counts for size, not depth.
                    own = own + Cost(0, inner.aliases, inner.directives, inner.fields)
                elif selection.selection_set:
                    own = own + inner.nested()
            elif isinstance(selection, FragmentSpreadNode):
                own = own + self.fragment(selection.name.value)
            elif isinstance(selection, InlineFragmentNode):
                own = own + self.selection_set(selection.selection_set)
            total = total + own
        return total


@dataclass(frozen=True)
class Limits:
    max_depth: int
    max_aliases: int
    max_directives: int
    max_fields: int
    # Documents measured already (a document's measure depends on nothing else).
    measured: PerDocument[list[GraphQLError]] = field(
        default_factory=lambda: PerDocument(512), compare=False, repr=False
    )

    def check(self, document: DocumentNode) -> list[GraphQLError]:
        """One error per limit an operation exceeds; empty when the document is within them."""
        return list(self.measured.get(document, self._check))

    def _check(self, document: DocumentNode) -> list[GraphQLError]:
        measure = _Measure(document)
        errors: list[GraphQLError] = []
        for operation in document.definitions:
            if not isinstance(operation, OperationDefinitionNode):
                continue
            cost = measure.selection_set(operation.selection_set)
            cost = cost + Cost(directives=len(operation.directives or ()))
            name = operation.name.value if operation.name else "anonymous"
            # Depth counts selection sets below the root: `{ me { id } }` has depth 1.
            if cost.depth > self.max_depth:
                errors.append(
                    GraphQLError(
                        f"'{name}' exceeds maximum operation depth of {self.max_depth}", operation
                    )
                )
            for count, limit, what in (
                (cost.aliases, self.max_aliases, "aliases"),
                (cost.directives, self.max_directives, "directives"),
                (cost.fields, self.max_fields, "field selections"),
            ):
                if count > limit:
                    errors.append(GraphQLError(f"'{name}' has more than {limit} {what}", operation))
        return errors


class QueryLimits(SchemaExtension):
    """Runs the limits check at the start of validation (list it before ValidationCache)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and not context.pre_execution_errors:
            errors = self.limits.check(context.graphql_document)
            if errors:
                # Strawberry runs graphql-core's validation only while this is still unset.
                context.pre_execution_errors = errors
        yield


class ValidationCache(StrawberryValidationCache):
    """Strawberry's validation cache, skipped for a document the limits already refused."""

    def on_validate(self) -> Iterator[None]:
        if self.execution_context.pre_execution_errors:
            yield
        else:
            yield from super().on_validate()


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
