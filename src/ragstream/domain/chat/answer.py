"""The running stream: one answer's provider call, its deltas, and how it ends.

`Answer.generate` runs in the answer's own task once its question is stored. The *work* —
preparing the prompt and streaming the provider's deltas, under `chat_timeout_seconds` — runs
as a child task. Stopping an answer (cancel, conversation deleted, shutdown) cancels the
work only, never the answer's task, so the end is always stored by code that nothing
interrupts:

  work returned ----------------------> COMPLETE
  work cancelled by stop(CANCELLED) ---> CANCELLED   (partial text kept)
  work cancelled by stop(other) -------> INTERRUPTED (partial text kept, the reason as code)
  work raised --------------------------> FAILED      (partial text kept, a code)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.engine import wait_for_connection
from ragstream.db.models.users import User
from ragstream.domain.chat import service
from ragstream.domain.chat.answer_limit import capped
from ragstream.domain.chat.endings import (
    CANCELLED,
    COMPLETE,
    CONVERSATION_DELETED,
    FAILED,
    INTERNAL_ERROR,
    INTERRUPTED,
    RETRIEVAL_FAILED,
    ending_code,
)
from ragstream.domain.chat.enums import FailureCode, MessageStatus, failure_code
from ragstream.domain.chat.flusher import Flusher
from ragstream.domain.chat.preparation import RetrievalFailed, Retriever, prepare_answer
from ragstream.domain.chat.streams import Crowd, GenerationStream
from ragstream.domain.chat.views import Ending, MessageView, SourceView, message_view
from ragstream.domain.llm.chat import (
    PROVIDER_TIMEOUT,
    ChatProvider,
    ChatProviderError,
    ChatRequest,
    TokenUsage,
)
from ragstream.domain.llm.pace import READ_PACE, ReadPace
from ragstream.domain.text import estimate_tokens
from ragstream.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Collaborators:
    """What every answer works with; built once at start-up."""

    sessionmaker: async_sessionmaker[AsyncSession]
    settings: Settings
    provider: ChatProvider
    retriever: Retriever
    flusher: Flusher
    # The connections the answers' own statements may use at once: a burst of answers waits
    # here for its turn instead of timing out in the pool (Settings.chat_database_lanes).
    lanes: asyncio.Semaphore
    # This process's followers: the answers read their provider streams at the pace these
    # are sent at (`Crowd.window`). None: every delta is read as it arrives.
    crowd: Crowd | None = None


@dataclass(frozen=True)
class Outcome:
    status: MessageStatus
    code: FailureCode | None = None
    usage: TokenUsage | None = None


class Answer:
    """One answer being generated, from its admission to its stored end."""

    def __init__(
        self, answer_id: uuid.UUID, viewer: User, stream: GenerationStream, tools: Collaborators
    ) -> None:
        self.id = answer_id
        self.viewer = viewer
        self.stream = stream
        self._tools = tools
        self.task: asyncio.Task[None] | None = None  # the answer's own task
        self.stop_reason: str | None = None
        self._work: asyncio.Task[TokenUsage | None] | None = None
        self._ending = False  # storing its end: stopping it now would change nothing
        self._sources: tuple[SourceView, ...] = ()
        self._prompt_tokens = 0

    def stop(self, reason: str) -> None:
        """Stops the answer: CANCELLED, INTERRUPTED or CONVERSATION_DELETED.

        The first reason counts; one given while the end is being stored changes nothing.
        Stopped before its work started, the answer ends without calling the provider.
        """
        if self._ending or self.stop_reason is not None:
            return
        self.stop_reason = reason
        if self._work is not None:
            self._work.cancel()

    async def generate(self, exchange: service.NewExchange) -> MessageView:
        """Prepares and streams the answer to the stored ``exchange``, then stores its end.

        Returns the stored answer; followers of the stream get it as the ending.
        """
        tools = self._tools
        tools.flusher.track(self.id, self.stream)
        work = None
        if self.stop_reason is None:
            work = self._work = asyncio.create_task(self._produce(exchange), name=f"work-{self.id}")
            try:
                await asyncio.wait([work])  # returns when the work ends, however it ends
            finally:
                # Reached with the work still running only when this task itself is cancelled
                # (the event loop is closing): the answer stays STREAMING in the database and
                # becomes INTERRUPTED at the next start-up.
                work.cancel()
        self._ending = True
        tools.flusher.forget(self.id)
        view = await self._store_end(exchange, self._outcome(work))
        self.stream.finish(Ending(view, ending_code(view)))
        return view

    async def _produce(self, exchange: service.NewExchange) -> TokenUsage | None:
        tools = self._tools
        async with asyncio.timeout(tools.settings.chat_timeout_seconds):
            async with tools.lanes:
                prepared = await prepare_answer(
                    tools.sessionmaker, tools.retriever, tools.settings, self.viewer, exchange
                )
            self._sources = prepared.sources
            self._prompt_tokens = prepared.prompt_tokens
            self.stream.set_sources(prepared.sources)
            return await self._stream(prepared.request)

    async def _stream(self, request: ChatRequest) -> TokenUsage | None:
        """Passes the provider's deltas to the stream; returns the usage it reported."""
        usage: TokenUsage | None = None
        flusher = self._tools.flusher
        provider = self._tools.provider
        # Paced only when the provider keeps what it sends while not read (see below).
        crowd = self._tools.crowd if provider.buffers_unread else None
        window = self._tools.settings.chat_coalesce_window_ms / 1000
        self.stream.paced = crowd is not None
        pace = ReadPace(grid=window, late=crowd.late) if crowd is not None else None
        loop = asyncio.get_running_loop()
        # Closing the provider's stream (also when the work is cancelled) stops its call.
        limit = self._tools.settings.chat_max_answer_chars
        answer = capped(provider.stream(request), limit)
        paced = READ_PACE.set(pace)
        try:
            async with contextlib.aclosing(answer) as chunks:
                async for chunk in chunks:
                    if chunk.text:
                        self.stream.append(chunk.text)
                        flusher.grew(self.id)
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if pace is None or crowd is None:
                        continue
                    if chunk.usage is not None:  # it comes last: nothing waits after it
                        pace.not_before, pace.grid = 0.0, 0.0
                        continue
                    # Reads begin at least a window apart, the pace the followers are sent
                    # at, on the ticks of the base window that every paced answer of the
                    # process shares: what the provider sends meanwhile waits in the
                    # connection and comes as one read, one wake-up of this task for several
                    # deltas, and each append is one event to every follower
                    # (`GenerationStream.paced`). Through a transport that does not take
                    # the pace, the task sleeps until the read is due.
                    pace.not_before = read_due(loop.time(), crowd.window(window), window)
                    if not pace.honoured and await _sleep_until(loop, pace.not_before):
                        crowd.late(loop.time() - pace.not_before)
        finally:
            READ_PACE.reset(paced)
        return usage

    def _outcome(self, work: asyncio.Task[TokenUsage | None] | None) -> Outcome:
        if work is None or work.cancelled():
            reason = self.stop_reason or INTERRUPTED
            return (
                Outcome(CANCELLED)
                if reason == CANCELLED
                else Outcome(INTERRUPTED, failure_code(reason))
            )
        error = work.exception()
        if error is None:
            return Outcome(COMPLETE, usage=work.result())
        if isinstance(error, TimeoutError):  # the whole answer took too long
            return Outcome(FAILED, PROVIDER_TIMEOUT)
        if isinstance(error, ChatProviderError):
            logger.warning("answer %s failed: %s", self.id, error.detail)
            return Outcome(FAILED, error.code)
        if isinstance(error, RetrievalFailed):
            logger.error("retrieval failed for answer %s", self.id, exc_info=error)
            return Outcome(FAILED, RETRIEVAL_FAILED)
        logger.error("answer %s failed", self.id, exc_info=error)
        return Outcome(FAILED, INTERNAL_ERROR)

    async def _store_end(self, exchange: service.NewExchange, outcome: Outcome) -> MessageView:
        text = self.stream.text()
        usage = outcome.usage
        prompt_tokens = usage.prompt_tokens if usage else self._prompt_tokens
        completion_tokens = usage.completion_tokens if usage else estimate_tokens(text)
        model = exchange.model  # the one the asker's chat feature chose
        answer = exchange.answer
        try:
            # One statement (see `MessageRepository.finish`): its own transaction.
            async with self._tools.lanes, self._tools.sessionmaker() as session:
                attempts = self._tools.settings.answer_connection_attempts
                what = f"the end of answer {self.id}"
                await wait_for_connection(session, attempts, what, autocommit=True)
                row = await service.finish_answer(
                    session,
                    self.id,
                    owner_id=answer.owner_id,
                    started_at=answer.created_at,
                    status=outcome.status,
                    content=text,
                    model=model,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    error_code=outcome.code,
                )
        except Exception:
            # It stays STREAMING in the database and becomes INTERRUPTED at the next start-up.
            logger.exception("could not store the end of answer %s", self.id)
            row = None
        if row is not None:
            return message_view(row, self._sources)
        # Not stored: the database failed, or the conversation is gone with the answer.
        status, code = outcome.status, outcome.code
        if self.stop_reason == CONVERSATION_DELETED:
            status, code = FAILED, CONVERSATION_DELETED
        return dataclasses.replace(
            answer,
            content=text,
            status=status,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            error_code=code,
            completed_at=datetime.now(answer.created_at.tzinfo),
            sources=self._sources,
        )


def read_due(now: float, step: float, grid: float) -> float:
    """When a read that ended ``now`` lets the next one begin: the first tick of ``grid``
    (the base window) at least ``step`` after the tick nearest ``now``.

    Every paced answer of a process (and of every process on the machine: the loop's clock is
    the monotonic one) then reads on the same ticks: the timers that let their reads begin fire
    in one turn of the event loop, the data of all of them comes in the next one, and one
    wake-up of the process serves them all where their own phases would each cost one.
    """
    if grid <= 0:
        return now + step
    steps = max(math.ceil(step / grid - 1e-9), 1)
    return (round(now / grid) + steps) * grid


async def _sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> bool:
    """Sleeps until ``when`` on the loop's clock; False (at once) if that has passed."""
    delay = when - loop.time()
    if delay <= 0:
        return False
    await asyncio.sleep(delay)
    return True
