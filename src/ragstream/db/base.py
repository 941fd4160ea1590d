from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import TypeVar

from sqlalchemy import DateTime, Dialect, MetaData, String, TypeDecorator, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names keep migrations reviewable and reversible.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UUIDPrimaryKey:
    id: Mapped[uuid.UUID] = mapped_column(
        primary_key=True, default=uuid.uuid4, server_default=text("gen_random_uuid()")
    )


class Timestamps:
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


EnumT = TypeVar("EnumT", bound=StrEnum)


class StrEnumType(TypeDecorator[EnumT]):
    """A domain ``StrEnum`` stored as its value in a VARCHAR column (no database enum type).

    Rows carry enum members; the allowed values are held by a check constraint built with
    ``one_of`` from the same enum.
    """

    impl = String
    cache_ok = True

    def __init__(self, enum: type[EnumT], length: int) -> None:
        super().__init__(length)
        self.enum = enum
        # Every row of a list converts its values: a dict lookup, not the enum's call.
        self._members: dict[str, EnumT] = {member.value: member for member in enum}

    def process_bind_param(self, value: EnumT | str | None, dialect: Dialect) -> str | None:
        return None if value is None else str(self.enum(value))

    def process_result_value(self, value: str | None, dialect: Dialect) -> EnumT | None:
        if value is None:
            return None
        member = self._members.get(value)
        return self.enum(value) if member is None else member  # unknown: the enum's ValueError

    @property
    def python_type(self) -> type[EnumT]:
        # Keyset cursors decode their values with it (a flag's key is a page key).
        return self.enum


def one_of(column: str, values: type[StrEnum]) -> str:
    """The check-constraint text allowing exactly an enum's values."""
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"
