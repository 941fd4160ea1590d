"""Answer preparation: what the model is asked, with which sources.

Retrieval over what the asking user may read, the linked evaluation and the recent history
(one short session), the sources cut to their token budget and stored with the answer, then
the prompt (`prompt.build_prompt`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.engine import wait_for_connection
from ragstream.db.models.users import User
from ragstream.domain.chat import service
from ragstream.domain.chat.prompt import build_prompt, fit_sources, passages
from ragstream.domain.chat.views import SourceView
from ragstream.domain.llm.chat import ChatRequest
from ragstream.domain.llm.embeddings import Embedder
from ragstream.domain.retrieval.service import MAX_QUERY_CHARS, SearchTuning, search
from ragstream.domain.text import estimate_tokens
from ragstream.settings import Settings


class SearchHit(Protocol):
    """What an answer needs from a retrieval result."""

    @property
    def chunk_id(self) -> uuid.UUID: ...
    @property
    def document_id(self) -> uuid.UUID: ...
    @property
    def document_title(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def heading_path(self) -> Sequence[str]: ...
    @property
    def page(self) -> int | None: ...
    @property
    def score(self) -> float: ...


# (session, viewer, query, limit) -> hits over what the viewer may read, best first. The
# session's transaction is the answer's preparation's alone: it only reads, and retrieval is
# the last thing in it, so its planner settings need not be set back.
Retriever = Callable[[AsyncSession, User, str, int], Awaitable[Sequence[SearchHit]]]


class RetrievalFailed(Exception):
    """The knowledge base could not be searched; the cause is chained for the log."""


def knowledge_base_retriever(embedder: Embedder, tuning: SearchTuning) -> Retriever:
    """Hybrid search of the knowledge base over what the asking user may read, tuned by the
    same settings as the `search` query (`SearchTuning.from_settings`)."""

    async def retrieve(
        session: AsyncSession, viewer: User, query: str, limit: int
    ) -> Sequence[SearchHit]:
        # Long questions are cut for retrieval only; the model still sees all of it.
        return await search(
            session,
            viewer,
            query[:MAX_QUERY_CHARS],
            limit,
            embedder,
            tuning=tuning,
            own_transaction=True,
        )

    return retrieve


@dataclass(frozen=True)
class PreparedAnswer:
    request: ChatRequest
    sources: tuple[SourceView, ...]
    prompt_tokens: int  # estimated, for when the provider reports no usage


async def prepare_answer(
    sessionmaker: async_sessionmaker[AsyncSession],
    retriever: Retriever,
    settings: Settings,
    viewer: User,
    exchange: service.NewExchange,
) -> PreparedAnswer:
    """Retrieves, stores the sources the prompt quotes, and builds the request.

    Raises RetrievalFailed when retrieval does. A busy pool delays it (the answer is admitted)
    for up to `Settings.answer_connection_attempts` pool timeouts.
    """
    question = exchange.question
    attempts = settings.answer_connection_attempts
    what = f"answer {exchange.answer.id}"
    async with sessionmaker() as session:
        await wait_for_connection(session, attempts, what)
        evaluation = await service.evaluation_context(session, viewer, exchange.evaluation_id)
        turns = await service.history(session, exchange.conversation_id, before=question.created_at)
        # Last: retrieval's planner settings last until the transaction ends (see Retriever).
        try:
            hits = await retriever(session, viewer, question.content, settings.chat_retrieval_limit)
        except Exception as exc:
            raise RetrievalFailed from exc
    candidates = [
        SourceView(
            index=i,
            document_id=hit.document_id,
            chunk_id=hit.chunk_id,
            title=hit.document_title,
            excerpt=hit.content[: service.EXCERPT_CHARS],
            page=hit.page,
            score=float(hit.score),
        )
        for i, hit in enumerate(hits, start=1)
    ]
    texts = fit_sources(
        service.source_texts(
            candidates, [hit.content for hit in hits], [hit.heading_path for hit in hits]
        ),
        settings.chat_sources_budget_tokens,
    )
    sources = tuple(candidates[: len(texts)])
    if sources:
        async with sessionmaker() as session:  # one statement: its own transaction
            await wait_for_connection(session, attempts, what, autocommit=True)
            await service.store_sources(session, exchange.answer.id, sources)
    messages = build_prompt(
        question=question.content,
        sources=texts,
        history=turns,
        evaluation=evaluation,
        system_prompt=settings.chat_system_prompt,
        history_budget_tokens=settings.chat_history_budget_tokens,
    )
    return PreparedAnswer(
        request=ChatRequest(
            messages=messages,
            question=question.content,
            passages=passages(texts),
            evaluation=evaluation,
            model=exchange.model,
            max_output_tokens=exchange.max_answer_tokens,
        ),
        sources=sources,
        prompt_tokens=sum(estimate_tokens(m.content) for m in messages),
    )
