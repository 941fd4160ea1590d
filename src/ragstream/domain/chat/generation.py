"""Answer generation as server-side tasks: started by a send, independent of any client.

Lifecycle of an answer (a `messages` row with role ASSISTANT):

  STREAMING --provider done--------------------> COMPLETE
            --cancelGeneration-----------------> CANCELLED   (partial text kept)
            --provider error/stall/timeout-----> FAILED      (partial text kept, a code)
            --shutdown past the grace period---> INTERRUPTED (partial text kept)
            --crash, then the next start-up----> INTERRUPTED (text up to the last flush)

Text deltas go to an in-memory stream (followers read it; no database access per token). One
persister task writes the text of every running answer at a fixed interval in a single
statement, which bounds what a crash can lose to that interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.models.users import User
from ragstream.db.repositories.messages import MessageRepository
from ragstream.domain.chat import service
from ragstream.domain.chat.prompt import build_prompt, fit_sources, passages
from ragstream.domain.chat.quota import ChatLimits
from ragstream.domain.chat.streams import (
    EndItem,
    GenerationStream,
    MemoryStreamHub,
    SourcesItem,
    StreamItem,
    TextItem,
)
from ragstream.domain.chat.views import Ending, MessageView, SourceView
from ragstream.domain.errors import InvalidInput, RateLimited
from ragstream.domain.llm.chat import (
    ChatProvider,
    ChatProviderError,
    ChatRequest,
    TokenUsage,
)
from ragstream.domain.llm.embeddings import Embedder
from ragstream.domain.retrieval.service import MAX_QUERY_CHARS, SearchTuning, search
from ragstream.domain.text import estimate_tokens
from ragstream.settings import Settings

logger = logging.getLogger(__name__)

STREAMING = "STREAMING"
COMPLETE = "COMPLETE"
CANCELLED = "CANCELLED"
FAILED = "FAILED"
INTERRUPTED = "INTERRUPTED"

# Failure codes besides the provider's (domain/llm/chat.py).
RETRIEVAL_FAILED = "RETRIEVAL_FAILED"
INTERNAL_ERROR = "INTERNAL_SERVER_ERROR"
CONVERSATION_DELETED = "CONVERSATION_DELETED"

FAILURE_MESSAGES = {
    "PROVIDER_UNAVAILABLE": "The language model could not be reached. Please try again.",
    "PROVIDER_ERROR": "The language model stopped with an error. Please try again.",
    "PROVIDER_TIMEOUT": "The language model took too long to answer. Please try again.",
    RETRIEVAL_FAILED: "The knowledge base could not be searched. Please try again.",
    INTERRUPTED: "The answer was interrupted by a server restart.",
    CONVERSATION_DELETED: "The conversation was deleted.",
    INTERNAL_ERROR: "The answer failed because of an internal error.",
}


def failure_message(code: str) -> str:
    return FAILURE_MESSAGES.get(code, FAILURE_MESSAGES[INTERNAL_ERROR])


class SearchHit(Protocol):
    """What generation needs from a retrieval result."""

    @property
    def chunk_id(self) -> uuid.UUID: ...
    @property
    def document_id(self) -> uuid.UUID: ...
    @property
    def document_title(self) -> str: ...
    @property
    def content(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def score(self) -> float: ...


# (session, viewer, query, limit) -> hits over what the viewer may read, best first
Retriever = Callable[[AsyncSession, User, str, int], Awaitable[Sequence[SearchHit]]]


class _RetrievalError(Exception):
    pass


def knowledge_base_retriever(embedder: Embedder, tuning: SearchTuning) -> Retriever:
    """Hybrid search of the knowledge base over what the asking user may read, tuned by the
    same settings as the `search` query (`SearchTuning.from_settings`)."""

    async def retrieve(
        session: AsyncSession, viewer: User, query: str, limit: int
    ) -> Sequence[SearchHit]:
        # Long questions are cut for retrieval only; the model still sees all of it.
        return await search(
            session, viewer, query[:MAX_QUERY_CHARS], limit, embedder, tuning=tuning
        )

    return retrieve


@dataclass
class _Generation:
    viewer: User
    exchange: service.NewExchange
    stream: GenerationStream
    task: asyncio.Task[None] | None = None
    stop_reason: str | None = None  # CANCELLED, INTERRUPTED or CONVERSATION_DELETED
    finishing: bool = False  # storing the end; stopping it now would lose the end
    sources: Sequence[SourceView] = ()
    flushed: int = 0  # text length already written

    @property
    def message_id(self) -> uuid.UUID:
        return self.exchange.answer.id


@dataclass
class GenerationManager:
    settings: Settings
    provider: ChatProvider
    hub: MemoryStreamHub = field(default_factory=MemoryStreamHub)
    _sessionmaker: async_sessionmaker[AsyncSession] | None = None
    _retriever: Retriever | None = None
    _running: dict[uuid.UUID, _Generation] = field(default_factory=dict)
    _pending: set[asyncio.Task[service.NewExchange]] = field(default_factory=set)
    _dirty: set[uuid.UUID] = field(default_factory=set)
    _dirty_event: asyncio.Event = field(default_factory=asyncio.Event)
    _persister: asyncio.Task[None] | None = None
    _accepting: bool = False
    # Answers admitted and not yet ended: being stored by a submit, or being generated.
    _slots: int = 0

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def limits(self) -> ChatLimits:
        return ChatLimits(
            daily_messages=self.settings.daily_message_limit,
            concurrent_generations=self.settings.chat_max_concurrent_generations,
        )

    @property
    def window(self) -> float:
        return self.settings.chat_coalesce_window_ms / 1000

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self._sessionmaker is None:
            raise RuntimeError("chat is not started")
        return self._sessionmaker

    @property
    def active(self) -> int:
        """Answers admitted in this process: being stored or generated (what the cap counts)."""
        return self._slots

    @property
    def max_active(self) -> int:
        return self.settings.active_generation_cap

    async def start(
        self, sessionmaker: async_sessionmaker[AsyncSession], retriever: Retriever
    ) -> int:
        """Marks answers a previous process left STREAMING as INTERRUPTED; returns how many.

        One server process per database is the supported default; several replicas would
        each need to recover only their own answers (see README, scaling out).
        """
        self._sessionmaker = sessionmaker
        self._retriever = retriever
        async with sessionmaker.begin() as session:
            interrupted = await MessageRepository(session).interrupt_streaming()
        if interrupted:
            logger.warning("marked %d unfinished answers as INTERRUPTED", interrupted)
        self._persister = asyncio.create_task(self._persist_loop(), name="chat-persister")
        self._accepting = True
        return interrupted

    @contextlib.asynccontextmanager
    async def running(
        self, sessionmaker: async_sessionmaker[AsyncSession], retriever: Retriever
    ) -> AsyncIterator[None]:
        """Recovery at start-up, then generation until shutdown (the app lifespan)."""
        await self.start(sessionmaker, retriever)
        try:
            yield
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """Lets running answers finish within the grace period, then interrupts the rest."""
        self._accepting = False
        if self._pending:
            await asyncio.wait(self._pending, timeout=self.settings.chat_shutdown_grace_seconds)
        tasks = [g.task for g in self._running.values() if g.task is not None]
        if tasks:
            logger.info("waiting for %d answers to finish", len(tasks))
            await asyncio.wait(tasks, timeout=self.settings.chat_shutdown_grace_seconds)
        for generation in list(self._running.values()):
            self._stop(generation, INTERRUPTED)
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._persister is not None:
            self._persister.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._persister
            self._persister = None
        await self.provider.aclose()

    # --- commands ----------------------------------------------------------------------------

    async def submit(
        self, viewer: User, *, conversation_id: uuid.UUID, content: str
    ) -> service.NewExchange:
        """Stores the question and an empty answer, and starts generating it.

        Shielded: once called, a client that goes away cannot leave a stored answer that
        nothing generates. RATE_LIMITED (reason SERVER_BUSY) when this process already has
        `Settings.active_generation_cap` answers under way.
        """
        if not self._accepting:
            raise RateLimited(
                "the server is restarting; try again in a moment",
                extensions={"reason": "SHUTTING_DOWN", "limit": 0, "resetAt": None},
            )
        # Checked and taken before the first await, so concurrent sends cannot overshoot; and
        # before anything is stored, so a refused send leaves no rows and uses no quota.
        if self._slots >= self.max_active:
            raise RateLimited(
                "the server is generating as many answers as it can; try again in a moment",
                extensions={
                    "reason": "SERVER_BUSY",
                    "limit": self.max_active,
                    # Frees up as soon as any running answer ends.
                    "resetAt": None,
                },
            )
        self._slots += 1
        task = asyncio.create_task(self._submit(viewer, conversation_id, content))
        self._pending.add(task)
        task.add_done_callback(self._submitted)
        return await asyncio.shield(task)

    def _submitted(self, task: asyncio.Task[service.NewExchange]) -> None:
        self._pending.discard(task)
        # Retrieved here, so an abandoned failure is not logged as lost.
        if task.cancelled() or task.exception() is not None:
            self._slots -= 1  # nothing was stored, so no answer holds the slot

    async def _submit(
        self, viewer: User, conversation_id: uuid.UUID, content: str
    ) -> service.NewExchange:
        """Runs with a slot taken by `submit`; the answer gives it back when it ends."""
        async with self.sessionmaker.begin() as session:
            exchange = await service.start_exchange(
                session,
                viewer,
                conversation_id=conversation_id,
                content=content,
                limits=self.limits,
                max_chars=self.settings.chat_max_message_chars,
                model=self.provider.model,
            )
        # No await between the commit and this: the answer always gets its task.
        generation = _Generation(viewer, exchange, self.hub.open(exchange.answer.id))
        self._running[generation.message_id] = generation
        generation.task = asyncio.create_task(
            self._run(generation), name=f"generation-{generation.message_id}"
        )
        return exchange

    async def cancel(self, viewer: User, message_id: uuid.UUID) -> MessageView:
        """Stops the viewer's running answer and stores it as CANCELLED with its partial text.

        Idempotent: an answer that already ended is returned as it is.
        """
        async with self.sessionmaker() as session:
            row = await service.get_own_message(session, viewer, message_id)
            status, content = row.status, row.content
        if status == STREAMING:
            generation = self._running.get(message_id)
            if generation is not None:
                self._stop(generation, CANCELLED)
                if generation.task is not None:
                    await asyncio.wait([generation.task])
            else:
                # Left by a process that is gone: nothing to stop, only the state to fix.
                async with self.sessionmaker.begin() as session:
                    await service.finish_answer(
                        session,
                        message_id,
                        owner_id=row.owner_id,
                        started_at=row.created_at,
                        status=CANCELLED,
                        content=content,
                        model=None,
                        prompt_tokens=None,
                        completion_tokens=estimate_tokens(content),
                        error_code=None,
                    )
        async with self.sessionmaker() as session:
            return await service.get_message(session, viewer, message_id)

    async def stop(self, message_ids: Sequence[uuid.UUID], reason: str) -> None:
        """Stops the given answers if they run here, and waits until they are stored."""
        tasks = []
        for message_id in message_ids:
            generation = self._running.get(message_id)
            if generation is not None and generation.task is not None:
                self._stop(generation, reason)
                tasks.append(generation.task)
        if tasks:
            await asyncio.wait(tasks)

    def _stop(self, generation: _Generation, reason: str) -> None:
        if generation.stop_reason is None and not generation.finishing and generation.task:
            generation.stop_reason = reason
            generation.task.cancel()

    # --- reading streams ---------------------------------------------------------------------

    async def watch(
        self, viewer: User, message_id: uuid.UUID, from_offset: int
    ) -> AsyncGenerator[StreamItem, None]:
        """Sources, the text from ``from_offset`` (first everything so far, then live), the end.

        Works for running answers (from memory) and finished ones (from the database).
        """
        if from_offset < 0:
            raise InvalidInput("fromOffset must not be negative", field="fromOffset")
        async with self.sessionmaker() as session:
            stored = await service.get_message(session, viewer, message_id)  # NOT_FOUND
        async for item in self._follow(stored, from_offset):
            yield item

    async def _follow(
        self, stored: MessageView, from_offset: int
    ) -> AsyncGenerator[StreamItem, None]:
        live = self.hub.follow(stored.id, from_offset, window=self.window)
        if live is not None:
            async with contextlib.aclosing(live):
                async for item in live:
                    yield item
            return
        offset = from_offset
        view: MessageView | None = stored
        while view is not None and view.status == STREAMING:
            # Running, but not in this process (or it just ended): follow the stored text.
            if len(view.content) > offset:
                yield TextItem(offset, view.content[offset:])
                offset = len(view.content)
            await asyncio.sleep(self.settings.chat_flush_interval_ms / 1000)
            async with self.sessionmaker() as session:
                view = await service.load_message(session, stored.id)
        if view is None:  # deleted meanwhile
            yield EndItem(Ending(stored, CONVERSATION_DELETED))
            return
        yield SourcesItem(view.sources)
        if len(view.content) > offset:
            yield TextItem(offset, view.content[offset:])
        yield EndItem(Ending(view, _ending_code(view)))

    async def follow_new(self, exchange: service.NewExchange) -> AsyncGenerator[StreamItem, None]:
        """Follows an answer just submitted by the caller (no further authorization needed)."""
        async for item in self._follow(exchange.answer, 0):
            yield item

    # --- the generation task -----------------------------------------------------------------

    async def _run(self, generation: _Generation) -> None:
        usage: TokenUsage | None = None
        prompt_estimate = 0
        status, code = COMPLETE, None
        unexpected_cancel = False
        try:
            async with asyncio.timeout(self.settings.chat_timeout_seconds):
                usage, prompt_estimate = await self._generate(generation)
        except asyncio.CancelledError:
            if generation.stop_reason is None:
                unexpected_cancel = True  # e.g. the event loop is closing
            reason = generation.stop_reason or INTERRUPTED
            status = CANCELLED if reason == CANCELLED else INTERRUPTED
            code = None if reason == CANCELLED else reason
            task = asyncio.current_task()
            if task is not None and not unexpected_cancel:
                task.uncancel()
        except TimeoutError:
            status, code = FAILED, "PROVIDER_TIMEOUT"
        except ChatProviderError as exc:
            logger.warning("answer %s failed: %s", generation.message_id, exc.detail)
            status, code = FAILED, exc.code
        except _RetrievalError:
            logger.exception("retrieval failed for answer %s", generation.message_id)
            status, code = FAILED, RETRIEVAL_FAILED
        except Exception:
            logger.exception("answer %s failed", generation.message_id)
            status, code = FAILED, INTERNAL_ERROR
        generation.finishing = True
        # Shielded: even a cancellation from outside must not leave the end unstored.
        finish = asyncio.ensure_future(
            self._finish(generation, status, code, usage, prompt_estimate)
        )
        try:
            await asyncio.shield(finish)
        finally:
            if unexpected_cancel:
                raise asyncio.CancelledError

    async def _generate(self, generation: _Generation) -> tuple[TokenUsage | None, int]:
        exchange = generation.exchange
        question = exchange.question
        settings = self.settings
        assert self._retriever is not None
        async with self.sessionmaker() as session:
            try:
                hits = await self._retriever(
                    session, generation.viewer, question.content, settings.chat_retrieval_limit
                )
            except Exception as exc:
                raise _RetrievalError from exc
            evaluation = await service.evaluation_context(
                session, generation.viewer, exchange.evaluation_id
            )
            turns = await service.history(
                session, exchange.conversation_id, before=question.created_at
            )
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
            service.source_texts(candidates, [h.content for h in hits]),
            settings.chat_sources_budget_tokens,
        )
        sources = candidates[: len(texts)]
        if sources:
            async with self.sessionmaker.begin() as session:
                await service.store_sources(session, generation.message_id, sources)
        generation.sources = sources
        generation.stream.set_sources(sources)

        messages = build_prompt(
            question=question.content,
            sources=texts,
            history=turns,
            evaluation=evaluation,
            system_prompt=settings.chat_system_prompt,
            history_budget_tokens=settings.chat_history_budget_tokens,
        )
        prompt_estimate = sum(estimate_tokens(m.content) for m in messages)
        request = ChatRequest(
            messages=messages, question=question.content, passages=passages(texts)
        )
        usage: TokenUsage | None = None
        stream = generation.stream
        message_id = generation.message_id
        async with contextlib.aclosing(self.provider.stream(request)) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    stream.append(chunk.text)
                    self._dirty.add(message_id)
                    self._dirty_event.set()
                if chunk.usage is not None:
                    usage = chunk.usage
        return usage, prompt_estimate

    async def _finish(
        self,
        generation: _Generation,
        status: str,
        code: str | None,
        usage: TokenUsage | None,
        prompt_estimate: int,
    ) -> None:
        message_id = generation.message_id
        text = generation.stream.text()
        answer = generation.exchange.answer
        prompt_tokens = usage.prompt_tokens if usage else prompt_estimate
        completion_tokens = usage.completion_tokens if usage else estimate_tokens(text)
        view: MessageView | None = None
        try:
            async with self.sessionmaker.begin() as session:
                row = await service.finish_answer(
                    session,
                    message_id,
                    owner_id=answer.owner_id,
                    started_at=answer.created_at,
                    status=status,
                    content=text,
                    model=self.provider.model,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    error_code=code,
                )
            if row is not None:
                view = MessageView(
                    id=row.id,
                    conversation_id=row.conversation_id,
                    owner_id=row.owner_id,
                    role=row.role,
                    content=row.content,
                    status=row.status,
                    model=row.model,
                    prompt_tokens=row.prompt_tokens,
                    completion_tokens=row.completion_tokens,
                    error_code=row.error_code,
                    created_at=row.created_at,
                    completed_at=row.completed_at,
                    sources=tuple(generation.sources),
                )
        except Exception:
            # It stays STREAMING in the database and becomes INTERRUPTED at the next start-up.
            logger.exception("could not store the end of answer %s", message_id)
        if view is None:
            if generation.stop_reason == CONVERSATION_DELETED:
                status, code = FAILED, CONVERSATION_DELETED
            view = MessageView(
                id=message_id,
                conversation_id=answer.conversation_id,
                owner_id=answer.owner_id,
                role=answer.role,
                content=text,
                status=status,
                model=self.provider.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                error_code=code,
                created_at=answer.created_at,
                completed_at=datetime.now(answer.created_at.tzinfo),
                sources=tuple(generation.sources),
            )
        generation.stream.finish(Ending(view, _ending_code(view)))
        self.hub.close(message_id)
        if self._running.pop(message_id, None) is not None:
            self._slots -= 1
        self._dirty.discard(message_id)

    # --- persistence while streaming ---------------------------------------------------------

    async def _persist_loop(self) -> None:
        interval = self.settings.chat_flush_interval_ms / 1000
        while True:
            await self._dirty_event.wait()
            await asyncio.sleep(interval)
            self._dirty_event.clear()
            await self.flush()

    async def flush(self) -> None:
        """Writes the text of every running answer that grew since its last write."""
        dirty, self._dirty = self._dirty, set()
        batch: list[tuple[uuid.UUID, str]] = []
        flushed: list[tuple[_Generation, int]] = []
        for message_id in dirty:
            generation = self._running.get(message_id)
            if generation is None or generation.stream.finished:
                continue
            text = generation.stream.text()
            if len(text) > generation.flushed:
                batch.append((message_id, text))
                flushed.append((generation, len(text)))
        if not batch:
            return
        try:
            async with self.sessionmaker.begin() as session:
                await MessageRepository(session).save_partial(batch)
        except Exception:
            logger.warning("could not save partial answers; retrying", exc_info=True)
            self._dirty |= dirty
            self._dirty_event.set()
            return
        for generation, length in flushed:
            generation.flushed = length


def _ending_code(view: MessageView) -> str | None:
    if view.status in (COMPLETE, CANCELLED):
        return None
    return view.error_code or INTERRUPTED
