"""Per-request DataLoaders: nested fields batch their reads into one query per level.

Every load function authorizes through the domain (the repository's readable statement), so a
loader never hands out a row the viewer could not fetch by id.

Lifetime: an HTTP request is one operation, so its loaders cache for that request. A websocket's
context lives as long as the socket and serves many operations; there the loaders still batch but
do not cache, so no operation (nor a later event of a subscription) is served rows read by an
earlier one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from ragstream.db.models.documents import Chunk
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.models.users import User
from ragstream.db.pagination import Page, ParentPageKey
from ragstream.db.repositories.chat import TokenTotals
from ragstream.domain.chat import service as chat
from ragstream.domain.documents import service as documents
from ragstream.domain.errors import NotFound, not_found
from ragstream.domain.evaluations import service as evaluations
from ragstream.domain.users.service import get_users
from ragstream.schema.chat.loaders import ChatLoaders
from ragstream.schema.flags.loaders import FlagLoaders
from ragstream.schema.scope import RequestScope


class Loaders:
    def __init__(self, context: RequestScope, *, cache: bool) -> None:
        self._context = context
        self.users: DataLoader[uuid.UUID, User] = DataLoader(self._load_users, cache=cache)
        self.evaluations_by_owner: DataLoader[ParentPageKey, Page[Evaluation]] = DataLoader(
            self._load_evaluations_by_owner, cache=cache
        )
        self.chunk_pages: DataLoader[ParentPageKey, Page[Chunk]] = DataLoader(
            self._load_chunk_pages, cache=cache
        )
        self.token_totals: DataLoader[uuid.UUID, TokenTotals | None] = DataLoader(
            self._load_token_totals, cache=cache
        )
        self.chat = ChatLoaders(context, cache=cache)
        self.flags = FlagLoaders(context, cache=cache)

    async def _load_users(self, ids: list[uuid.UUID]) -> Sequence[User | NotFound]:
        """Accounts by id: yourself, or anyone for an admin; others are NOT_FOUND."""
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            found = await get_users(session, viewer, list(set(ids)))
        return [found.get(user_id) or not_found("user") for user_id in ids]

    async def _load_token_totals(self, ids: list[uuid.UUID]) -> Sequence[TokenTotals | None]:
        """Usage of accounts: your own, or anyone's for an admin; None for the others."""
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            found = await chat.token_totals(session, viewer, list(set(ids)))
        return [found.get(i) for i in ids]

    async def _load_evaluations_by_owner(self, keys: list[ParentPageKey]) -> list[Page[Evaluation]]:
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            return await evaluations.pages_by_owner(session, viewer, keys)

    async def _load_chunk_pages(self, keys: list[ParentPageKey]) -> list[Page[Chunk]]:
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            return await documents.chunk_pages(session, viewer, keys)
