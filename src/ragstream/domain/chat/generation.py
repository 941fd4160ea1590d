"""Answer generation as server-side tasks: started by a send, independent of any client.

Lifecycle of an answer (a `messages` row with role ASSISTANT):

  STREAMING --provider done--------------------> COMPLETE
            --cancelGeneration-----------------> CANCELLED   (partial text kept)
            --provider error/stall/timeout-----> FAILED      (partial text kept, a code)
            --shutdown past the grace period---> INTERRUPTED (partial text kept)
            --crash, then its lease expires----> INTERRUPTED (text up to the last flush)

The parts, each in its own module:

- admission.py   the server-wide slots and the per-user limits; stores question and answer
- preparation.py retrieval, evaluation, history and sources into the prompt
- answer.py      the provider call, its deltas, and how the answer ends
- flusher.py     writes the text of running answers at a fixed interval
- streams.py     the in-memory text of each answer, which followers read from any offset
- ownership.py   this process's lease on its answers; interrupting those of expired leases

This module ties them together: one task per answer, from admission to its stored end, and
the commands and reads the API calls (submit, cancel, stop, watch). Several server processes
may share the database: an answer still STREAMING in it is running here, in another process
whose lease holds, or was left by a process that died (and is interrupted once its lease
expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.models.users import User
from ragstream.domain.chat import service
from ragstream.domain.chat.admission import ServerSlots, store_exchange
from ragstream.domain.chat.answer import Answer, Collaborators
from ragstream.domain.chat.endings import (
    CANCELLED,
    INTERRUPTED,
    STREAMING,
    ending_code,
)
from ragstream.domain.chat.flusher import Flusher
from ragstream.domain.chat.ownership import Ownership
from ragstream.domain.chat.preparation import Retriever
from ragstream.domain.chat.remote import (
    STOP_REASONS,
    Relay,
    RemoteAnswers,
    message_topic,
    process_topic,
)
from ragstream.domain.chat.streams import (
    Crowd,
    EndItem,
    MemoryStreamHub,
    SourcesItem,
    StreamItem,
    TextItem,
)
from ragstream.domain.chat.views import Ending, MessageView
from ragstream.domain.errors import DomainError, InvalidInput
from ragstream.domain.events import EventBroker, InMemoryBroker
from ragstream.domain.flags.features import AccountFlags
from ragstream.domain.llm.chat import ChatProvider
from ragstream.domain.text import estimate_tokens
from ragstream.settings import Settings

logger = logging.getLogger(__name__)


@dataclass
class GenerationManager:
    settings: Settings
    provider: ChatProvider
    hub: MemoryStreamHub = field(default_factory=MemoryStreamHub)
    _tools: Collaborators | None = None
    # Every answer from its admission until its end is stored, by id.
    _answers: dict[uuid.UUID, Answer] = field(default_factory=dict)
    _ownership: Ownership | None = None
    _remote: RemoteAnswers | None = None
    _relay: Relay | None = None
    _broker: EventBroker = field(default_factory=InMemoryBroker)

    def __post_init__(self) -> None:
        settings = self.settings
        if self.hub.crowd is None:
            self.hub.crowd = Crowd(settings.chat_max_events_per_second)
        self.slots = ServerSlots(
            settings.chat_max_active_generations,
            queue_length=settings.chat_admission_queue_length,
            wait_seconds=settings.chat_admission_wait_seconds,
        )

    @property
    def active(self) -> int:
        """Answers admitted in this process: being stored or generated (what the cap counts)."""
        return self.slots.active

    @property
    def tools(self) -> Collaborators:
        if self._tools is None:
            raise RuntimeError("chat is not started")
        return self._tools

    # --- lifecycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        retriever: Retriever,
        *,
        broker: EventBroker | None = None,
        alone: bool = False,
        lease_sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    ) -> AsyncIterator[None]:
        """Generation until shutdown (the app lifespan), under this process's lease.

        ``broker``: reaches the other server processes on the database (remote.py); alone
        when omitted. ``alone``: no other server can be using the database (ownership.py).
        ``lease_sessionmaker``: a connection of its own for the lease (else the pool's).
        """
        self._broker = broker if broker is not None else InMemoryBroker()
        ownership = self._ownership = Ownership(
            sessionmaker,
            self.settings.chat_lease_seconds,
            self._interrupted_elsewhere,
            lease_sessionmaker,
        )
        window = self.settings.chat_coalesce_window_ms / 1000
        relay = self._relay = Relay(self._broker, self._answers, window)
        self._remote = RemoteAnswers(
            self._broker, sessionmaker, ownership, self.settings.chat_follow_poll_seconds
        )
        flusher = Flusher(
            sessionmaker, self.settings.chat_flush_interval_ms / 1000, self._stop_requested
        )
        lanes = asyncio.Semaphore(self.settings.chat_database_connections)
        self._tools = Collaborators(
            sessionmaker, self.settings, self.provider, retriever, flusher, lanes, self.hub.crowd
        )
        try:
            async with (
                self._broker.subscribe(process_topic(ownership.process_id)) as requests,
                ownership.running(alone=alone),
                flusher.running(),
            ):
                relaying = asyncio.create_task(relay.serve(requests), name="chat-relay")
                self.slots.accepting = True
                try:
                    yield
                finally:
                    await self._shutdown()
                    relaying.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await relaying
                    await relay.close()
        finally:
            await self.provider.aclose()

    @property
    def ownership(self) -> Ownership:
        if self._ownership is None:
            raise RuntimeError("chat is not started")
        return self._ownership

    @property
    def remote(self) -> RemoteAnswers:
        if self._remote is None:
            raise RuntimeError("chat is not started")
        return self._remote

    async def _interrupted_elsewhere(self, message_ids: Sequence[uuid.UUID]) -> None:
        """Answers of a stopped process were just marked INTERRUPTED: their followers end."""
        for message_id in message_ids:
            await self._broker.publish(message_topic(message_id), {"kind": "end"})

    async def _shutdown(self) -> None:
        """Lets running answers finish within the grace period, then interrupts the rest."""
        self.slots.accepting = False
        tasks = [answer.task for answer in self._answers.values() if answer.task is not None]
        if not tasks:
            return
        logger.info("waiting for %d answers to finish", len(tasks))
        await asyncio.wait(tasks, timeout=self.settings.chat_shutdown_grace_seconds)
        for answer in list(self._answers.values()):
            answer.stop(INTERRUPTED)
        await asyncio.wait(tasks)

    # --- commands ----------------------------------------------------------------------------

    async def submit(
        self, viewer: User, *, flags: AccountFlags, conversation_id: uuid.UUID, content: str
    ) -> service.NewExchange:
        """Stores the question and an empty answer, and starts generating it.

        RATE_LIMITED (reason SERVER_BUSY) when this process already has
        `Settings.chat_max_active_generations` answers under way and no slot frees up within
        the admission wait, before anything is stored.
        """
        # Before anything is stored, so a refused send leaves no rows and uses no quota.
        await self.slots.enter()
        tools = self.tools
        answer_id = uuid.uuid4()
        # Open and known before the answer is stored: whoever reads it finds it running.
        answer = Answer(answer_id, viewer, self.hub.open(answer_id), tools)
        self._answers[answer_id] = answer
        stored: asyncio.Future[service.NewExchange] = asyncio.get_running_loop().create_future()
        answer.task = asyncio.create_task(
            self._live(answer, stored, flags, conversation_id, content), name=f"answer-{answer_id}"
        )
        try:
            # asyncio.wait never cancels what it waits for: a sender that goes away now cannot
            # leave a stored answer that nothing generates.
            await asyncio.wait([stored])
        except asyncio.CancelledError:
            stored.add_done_callback(_unclaimed)
            raise
        return stored.result()

    async def _live(
        self,
        answer: Answer,
        stored: asyncio.Future[service.NewExchange],
        flags: AccountFlags,
        conversation_id: uuid.UUID,
        content: str,
    ) -> None:
        """The whole life of one answer, in its own task: stored, generated, ended."""
        try:
            try:
                async with self.tools.lanes:
                    exchange = await store_exchange(
                        self.tools.sessionmaker,
                        self.settings,
                        answer.viewer,
                        flags=flags,
                        answer_id=answer.id,
                        conversation_id=conversation_id,
                        content=content,
                        model_for=self.provider.model_for,
                        generator_id=self.ownership.process_id,
                    )
            except Exception as exc:  # a refusal (limits, validation) or a fault: the sender's
                stored.set_exception(exc)
                return
            stored.set_result(exchange)
            if self._relay is not None:
                self._relay.started(answer.id, answer.stream)
            await answer.generate(exchange)
        finally:
            if not stored.done():  # cancelled while storing (the event loop is closing)
                stored.cancel()
            if self._relay is not None:
                self._relay.ended(answer.id, answer.stream)
            del self._answers[answer.id]
            self.hub.close(answer.id)
            self.slots.give_back()

    async def cancel(self, viewer: User, message_id: uuid.UUID) -> MessageView:
        """Stops the viewer's running answer and stores it as CANCELLED with its partial text.

        Idempotent: an answer that already ended is returned as it is.
        """
        async with self.tools.sessionmaker() as session:
            row = await service.get_own_message(session, viewer, message_id)  # NOT_FOUND
            status = row.status
        answer = self._answers.get(message_id)
        if answer is not None:
            answer.stop(CANCELLED)
            if answer.task is not None:
                await asyncio.wait([answer.task])
        elif status == STREAMING:
            # Another process generates it; one whose lease expired stores nothing any more.
            await self.remote.cancel(viewer, message_id, self._store_cancelled)
        async with self.tools.sessionmaker() as session:
            return await service.get_message(session, viewer, message_id)

    def _stop_requested(self, message_id: uuid.UUID, reason: str) -> None:
        """Another process asked, through the database, to stop an answer running here."""
        answer = self._answers.get(message_id)
        if answer is not None and reason in STOP_REASONS:
            answer.stop(reason)

    async def _store_cancelled(self, answer: MessageView) -> None:
        """Stores the end of an answer nothing generates any more, as CANCELLED."""
        content = answer.content
        async with self.tools.sessionmaker.begin() as session:
            await service.finish_answer(
                session,
                answer.id,
                owner_id=answer.owner_id,
                started_at=answer.created_at,
                status=CANCELLED,
                content=content,
                model=answer.model,
                prompt_tokens=None,
                completion_tokens=estimate_tokens(content),
                error_code=None,
            )

    async def stop(
        self, answers: Sequence[tuple[uuid.UUID, uuid.UUID | None]], reason: str
    ) -> None:
        """Stops the given answers (each with the process generating it) if they run here,
        and waits until their ends are stored."""
        tasks = []
        for message_id, generator in answers:
            answer = self._answers.get(message_id)
            if answer is not None and answer.task is not None:
                answer.stop(reason)
                tasks.append(answer.task)
            elif generator is not None:
                await self._broker.publish(
                    process_topic(generator),
                    {"op": "stop", "id": str(message_id), "reason": reason},
                )
        if tasks:
            await asyncio.wait(tasks)

    # --- reading streams ---------------------------------------------------------------------

    async def watch(
        self, viewer: User, message_id: uuid.UUID, from_offset: int
    ) -> AsyncGenerator[StreamItem, None]:
        """Sources, the text from ``from_offset`` (first everything so far, then live), the end.

        Works for running answers (from memory) and finished ones (from the database).
        """
        if from_offset < 0:
            raise InvalidInput("fromOffset must not be negative", field="fromOffset")
        async with self.tools.sessionmaker() as session:
            stored = await service.get_message(session, viewer, message_id)  # NOT_FOUND
        async with contextlib.aclosing(self._follow(stored, from_offset)) as items:
            async for item in items:
                yield item

    def follow_new(self, exchange: service.NewExchange) -> AsyncGenerator[StreamItem, None]:
        """Follows an answer just submitted by the caller (no further authorization needed)."""
        return self._follow(exchange.answer, 0)

    def _follow(self, stored: MessageView, from_offset: int) -> AsyncGenerator[StreamItem, None]:
        # The live stream itself when the answer runs here: every generator that passes its
        # items on costs each event (each token) a step more.
        live = self.hub.follow(
            stored.id, from_offset, window=self.settings.chat_coalesce_window_ms / 1000
        )
        return self._not_here(stored, from_offset) if live is None else live

    async def _not_here(
        self, stored: MessageView, from_offset: int
    ) -> AsyncGenerator[StreamItem, None]:
        if stored.status == STREAMING:
            # Running in another process, or it ended between the read and now.
            async for item in self.remote.follow(stored, from_offset):
                yield item
            return
        yield SourcesItem(stored.sources)
        if len(stored.content) > from_offset:
            yield TextItem(from_offset, stored.content[from_offset:])
        yield EndItem(Ending(stored, ending_code(stored)))


def _unclaimed(stored: asyncio.Future[service.NewExchange]) -> None:
    """The sender left before its answer was stored: a refusal is nobody's to see any more,
    but a fault is still logged."""
    if stored.cancelled():
        return
    error = stored.exception()
    if error is not None and not isinstance(error, DomainError):
        logger.error("storing a question failed after its sender left", exc_info=error)
