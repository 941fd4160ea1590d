"""What the client selected under the field being resolved, so a resolver computes no more."""

from __future__ import annotations

from collections.abc import Iterable

from strawberry.types.nodes import SelectedField, Selection

from ragstream.schema.context import Info


def selects(info: Info, name: str) -> bool:
    """Whether the current field's selection set asks for ``name`` (through any fragment).

    A field under ``@skip``/``@include`` counts as asked for: computing it anyway costs only
    what this check saves, never a wrong answer.
    """
    return any(_selects(field.selections, name) for field in info.selected_fields)


def _selects(selections: Iterable[Selection], name: str) -> bool:
    for selection in selections:
        if isinstance(selection, SelectedField):
            if selection.name == name:
                return True
        elif _selects(selection.selections, name):
            return True
    return False
