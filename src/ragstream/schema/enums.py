"""Domain enums exposed to GraphQL as they are, so no layer maps one enum onto another."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

import strawberry
from strawberry.types.enum import has_enum_definition

E = TypeVar("E", bound=StrEnum)


def api_enum(enum: type[E], *, description: str, values: Mapping[E, str]) -> type[E]:
    """Register ``enum`` (a domain enum) as a GraphQL enum of the same name.

    ``values`` describes every member (a missing one is an error at import): the schema's
    contract is that every enum value carries a description.
    """
    missing = [member.name for member in enum if member not in values]
    if missing:
        raise ValueError(f"{enum.__name__}: no description for {', '.join(missing)}")
    registered = strawberry.enum(enum, description=description)
    assert has_enum_definition(registered)
    for value in registered.__strawberry_definition__.values:
        value.description = values[enum[value.name]]
    return enum
