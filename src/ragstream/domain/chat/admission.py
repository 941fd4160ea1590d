"""Admission: whether a send may start an answer now, and storing the question with its answer.

Two kinds of cap. The server-wide one counts the answers under way in this process, in memory:
it is set by what one process can stream, and a burst past it waits briefly in a bounded queue
(`ServerSlots.enter`), then is refused (SERVER_BUSY) before anything touches the database. The
per-user ones (questions per UTC day, answers at the same time) come from the viewer's `chat`
feature and are checked in the database, under a per-user lock, in the transaction that stores the
exchange (`quota.check_can_send`). Every refusal is RATE_LIMITED and stores nothing, except a
switched-off chat feature: FORBIDDEN with reason FEATURE_DISABLED.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import uuid
from collections.abc import Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.models.users import User
from ragstream.domain.chat import service
from ragstream.domain.chat.quota import ChatLimits
from ragstream.domain.errors import RateLimited
from ragstream.domain.flags.enums import FeatureKey
from ragstream.domain.flags.features import AccountFlags, ChatPolicy
from ragstream.domain.flags.service import conversation_features
from ragstream.settings import Settings


class ServerSlots:
    """Answers admitted in this process and not yet ended: being stored, or generated.

    A send past the cap may wait for a slot: at most ``queue_length`` sends wait, each at most
    ``wait_seconds``, first come first served; a slot given back goes straight to the oldest
    waiter, so the cap is never overshot. Any other send past the cap is refused at once.
    """

    def __init__(self, cap: int, *, queue_length: int = 0, wait_seconds: float = 0.0) -> None:
        self.cap = cap
        self.active = 0
        self.accepting = False  # off before start-up and from the start of a shutdown
        self.queue_length = queue_length
        self.wait_seconds = wait_seconds
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take(self) -> None:
        """Takes a slot, or raises RATE_LIMITED (reason SHUTTING_DOWN or SERVER_BUSY).

        Synchronous: checked and taken with no await in between, so concurrent sends cannot
        overshoot the cap.
        """
        if not self.accepting:
            raise RateLimited(
                "the server is restarting; try again in a moment",
                extensions={"reason": "SHUTTING_DOWN", "limit": 0, "resetAt": None},
            )
        if self.active >= self.cap or self._waiters:
            raise self._busy()
        self.active += 1

    async def enter(self) -> None:
        """Takes a slot, waiting for one (bounded) when the cap is reached."""
        try:
            self.take()
            return
        except RateLimited as refused:
            if not self.accepting or len(self._waiters) >= self.queue_length:
                raise
            busy = refused
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_seconds):
                await waiter  # resolved by give_back, with the slot already counted
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # handed over just as the wait ran out: the slot is this send's
            raise busy from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give_back()  # handed over just as this send went away
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _busy(self) -> RateLimited:
        return RateLimited(
            "the server is generating as many answers as it can; try again in a moment",
            extensions={
                "reason": "SERVER_BUSY",
                "limit": self.cap,
                # Frees up as soon as any running answer ends.
                "resetAt": None,
            },
        )

    def give_back(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done() and self.accepting:
                waiter.set_result(None)  # the slot passes on: `active` stays as it is
                return
        self.active -= 1


async def chat_policy(
    session: AsyncSession, flags: AccountFlags, evaluation_id: uuid.UUID | None, *, environment: str
) -> ChatPolicy:
    """The viewer's chat feature in a conversation (the flags of its evaluation join in), or
    FORBIDDEN (reason FEATURE_DISABLED) when it is off."""
    features = await conversation_features(session, flags, evaluation_id, environment=environment)
    features.require(FeatureKey.CHAT)
    return features.chat()


async def store_exchange(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    viewer: User,
    *,
    flags: AccountFlags,
    answer_id: uuid.UUID,
    conversation_id: uuid.UUID,
    content: str,
    model_for: Callable[[str], str],
    generator_id: uuid.UUID,
) -> service.NewExchange:
    """Stores the viewer's question and the empty answer ``answer_id`` (STREAMING, generated
    by the process ``generator_id``), in one transaction, if the viewer's chat feature is on
    and its limits allow it.

    The feature gives the limits, the model (``model_for`` maps it to the model that will
    answer) and the answer's token budget.
    """
    text = service.normalize_content(content, settings.chat_max_message_chars)
    async with sessionmaker.begin() as session:
        conversation = await service.conversation_to_send_in(session, viewer, conversation_id)
        policy = await chat_policy(
            session, flags, conversation.evaluation_id, environment=settings.environment
        )
        return await service.start_exchange(
            session,
            viewer,
            answer_id=answer_id,
            conversation=conversation,
            text=text,
            limits=ChatLimits(
                daily_messages=policy.daily_limit, concurrent_generations=policy.max_concurrent
            ),
            model=model_for(policy.model),
            max_answer_tokens=policy.max_answer_tokens,
            generator_id=generator_id,
        )
