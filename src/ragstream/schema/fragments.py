"""What the query limits share: each fragment measured once per document, and each document
measured once."""

from __future__ import annotations

from collections import OrderedDict
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


class PerDocument(Generic[T]):
    """Results that depend on a parsed document alone, computed once per document.

    The parser cache hands the same document object back for the same text, so a request that
    repeats a document finds its result here. Entries are keyed by identity and hold their
    document, so an id is never reused while its entry stands; the oldest go past ``size``.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[DocumentNode, T]] = OrderedDict()

    def get(self, document: DocumentNode, compute: Callable[[DocumentNode], T]) -> T:
        entry = self._entries.get(id(document))
        if entry is not None and entry[0] is document:
            self._entries.move_to_end(id(document))
            return entry[1]
        result = compute(document)
        self._entries[id(document)] = (document, result)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return result
