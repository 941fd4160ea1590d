"""DataLoaders for the nested fields of chat types (messages, sources, evaluations).

Each load authorizes in its query: a cited document the viewer can no longer read resolves to
null, exactly like a deleted one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from strawberry.dataloader import DataLoader

from ragstream.db.models.documents import Chunk, Document
from ragstream.db.models.evaluations import Evaluation
from ragstream.db.pagination import Page, ParentPageKey
from ragstream.domain.chat import service
from ragstream.domain.chat.views import MessageView
from ragstream.schema.scope import RequestScope


class ChatLoaders:
    def __init__(self, context: RequestScope, *, cache: bool) -> None:
        self._context = context
        # Conversation.messages of every conversation in a response: one read for their pages.
        self.message_pages: DataLoader[ParentPageKey, Page[MessageView]] = DataLoader(
            self._load_message_pages, cache=cache
        )
        self.documents: DataLoader[uuid.UUID, Document | None] = DataLoader(
            self._load_documents, cache=cache
        )
        self.chunks: DataLoader[uuid.UUID, Chunk | None] = DataLoader(
            self._load_chunks, cache=cache
        )
        self.evaluations: DataLoader[uuid.UUID, Evaluation | None] = DataLoader(
            self._load_evaluations, cache=cache
        )

    async def _load_message_pages(self, keys: list[ParentPageKey]) -> list[Page[MessageView]]:
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            return await service.message_pages(session, viewer, keys)

    async def _load_documents(self, ids: list[uuid.UUID]) -> Sequence[Document | None]:
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            found = await service.cited_documents(session, viewer, list(set(ids)))
        return [found.get(i) for i in ids]

    async def _load_chunks(self, ids: list[uuid.UUID]) -> Sequence[Chunk | None]:
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            found = await service.cited_chunks(session, viewer, list(set(ids)))
        return [found.get(i) for i in ids]

    async def _load_evaluations(self, ids: list[uuid.UUID]) -> Sequence[Evaluation | None]:
        viewer = await self._context.viewer()
        async with self._context.transaction() as session:
            found = await service.linked_evaluations(session, viewer, list(set(ids)))
        return [found.get(i) for i in ids]
