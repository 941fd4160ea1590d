"""Retrieval timed for the search latency histogram."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from ragstream.db.models.users import User
from ragstream.domain.chat.preparation import Retriever, SearchHit
from ragstream.observability.metrics import Metrics
from ragstream.observability.tracing import Tracing


def timed_retriever(retriever: Retriever, metrics: Metrics, tracing: Tracing) -> Retriever:
    """The chat's retriever, timed as search kind "chat" and traced (unchanged when both are
    off)."""
    if not metrics.enabled and not tracing.enabled:
        return retriever

    async def retrieve(
        session: AsyncSession, viewer: User, query: str, limit: int
    ) -> Sequence[SearchHit]:
        with observe_search(metrics, tracing, "chat", limit):
            return await retriever(session, viewer, query, limit)

    return retrieve


@contextlib.contextmanager
def observe_search(metrics: Metrics, tracing: Tracing, kind: str, limit: int) -> Iterator[None]:
    """One retrieval: its latency and its span."""
    with (
        metrics.search(kind),
        tracing.span("retrieval", **{"retrieval.kind": kind, "retrieval.limit": limit}),
    ):
        yield
