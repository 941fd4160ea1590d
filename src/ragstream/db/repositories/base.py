"""What every repository that reads for a viewer shares: one readable statement.

A repository names its rule once, in ``readable_by``; every read for a viewer starts from
``readable(viewer)`` (or joins ``readable_by``), so a read without the filter cannot be written by
accident. Reads for the system itself (the generation task, ingestion jobs) say so in their names.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models.users import User

RowT = TypeVar("RowT")


class Repository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session


class ReadableRepository(Repository, Generic[RowT]):
    model: ClassVar[type[Any]]

    @classmethod
    def readable_by(cls, viewer: User) -> ColumnElement[bool]:
        """The rows ``viewer`` may read, as a condition on ``model``."""
        raise NotImplementedError

    def readable(self, viewer: User) -> Select[RowT]:
        return select(self.model).where(self.readable_by(viewer))
