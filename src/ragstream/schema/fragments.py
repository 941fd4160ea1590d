"""The fragment walk the query limits share: each fragment measured once per document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from graphql import DocumentNode, FragmentDefinitionNode

T = TypeVar("T")


class FragmentMeasures(Generic[T]):
    """A document's fragments, each measured once however often it is spread (fragments that
    each spread the next one twice would otherwise cost 2**n). An unknown or cyclic fragment
    measures as ``empty``: graphql-core's validation reports those."""

    def __init__(self, document: DocumentNode, empty: T) -> None:
        self.definitions = {
            d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
        }
        self.empty = empty
        self._done: dict[str, T] = {}
        self._in_progress: set[str] = set()

    def measure(self, name: str, measure: Callable[[FragmentDefinitionNode], T]) -> T:
        if name in self._done:
            return self._done[name]
        definition = self.definitions.get(name)
        if definition is None or name in self._in_progress:
            return self.empty
        self._in_progress.add(name)
        try:
            value = measure(definition)
        finally:
            self._in_progress.discard(name)
        self._done[name] = value
        return value
