"""Text PostgreSQL cannot store is refused before any resolver runs.

A NUL character (``\\u0000``) or an unpaired surrogate (``\\ud800``) in any string a request
carries — a variable, a literal argument, however deeply nested in an input — answers
BAD_USER_INPUT. Without this check they reached the database and came back as internal errors.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from graphql import (
    ArgumentNode,
    DocumentNode,
    GraphQLError,
    ObjectFieldNode,
    StringValueNode,
    Visitor,
    visit,
)
from strawberry.extensions import SchemaExtension

from ragstream.schema.fragments import PerDocument

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MESSAGE = "text must not contain NUL characters or unpaired surrogates"


def unstorable(text: str) -> bool:
    return _UNSTORABLE.search(text) is not None


def unstorable_field(value: object, name: str) -> str | None:
    """The name of the field holding an unstorable string in a decoded JSON value: the innermost
    object key above it (an input field), else ``name`` (the variable); None when all is well."""
    stack: list[tuple[object, str]] = [(value, name)]
    while stack:
        item, field = stack.pop()
        if isinstance(item, str):
            if unstorable(item):
                return field
        elif isinstance(item, dict):
            for key, child in item.items():
                if unstorable(key):
                    return field
                stack.append((child, key))
        elif isinstance(item, list):
            stack.extend((child, field) for child in item)
    return None


class _Literals(Visitor):
    field: str | None = None

    def enter_string_value(
        self, node: StringValueNode, key: object, parent: object, path: object, ancestors: list[Any]
    ) -> object:
        if not unstorable(node.value):
            return None
        self.field = "value"
        for ancestor in reversed([*ancestors, parent]):
            if isinstance(ancestor, ArgumentNode | ObjectFieldNode):
                self.field = ancestor.name.value
                break
        return self.BREAK


def document_unstorable_field(document: DocumentNode) -> str | None:
    return _documents_checked.get(document, _unstorable_literal)


def _unstorable_literal(document: DocumentNode) -> str | None:
    literals = _Literals()
    visit(document, literals)
    return literals.field


# A document's literals do not change: each document is walked once.
_documents_checked: PerDocument[str | None] = PerDocument(512)


class StringGuard(SchemaExtension):
    """Checks the variables and the document's string literals at the start of validation."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if not context.pre_execution_errors:
            field = next(
                (
                    found
                    for name, value in (context.variables or {}).items()
                    if (found := unstorable_field(value, name)) is not None
                ),
                None,
            )
            if field is None and context.graphql_document is not None:
                field = document_unstorable_field(context.graphql_document)
            if field is not None:
                context.pre_execution_errors = [
                    GraphQLError(MESSAGE, extensions={"code": "BAD_USER_INPUT", "field": field})
                ]
        yield
