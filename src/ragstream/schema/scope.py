"""What DataLoaders need from the request they serve: its viewer and the database."""

from __future__ import annotations

import contextlib
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models.users import User
from ragstream.state import AppState


class RequestScope(Protocol):
    """Satisfied by `schema.context.Context`; loaders take this, not the context itself, so the
    context can own its loaders without an import circle."""

    @property
    def state(self) -> AppState: ...

    async def viewer(self) -> User: ...

    def transaction(self) -> contextlib.AbstractAsyncContextManager[AsyncSession]: ...
