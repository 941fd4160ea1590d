"""Admission: whether a send may start an answer now, and storing the question with its answer.

Two kinds of cap. The server-wide one counts the answers under way in this process, in memory:
a burst past it is refused at once, before it queues for database connections. The per-user
ones (questions per UTC day, answers at the same time) are checked in the database, under a
per-user lock, in the transaction that stores the exchange (`quota.check_can_send`).
Every refusal is RATE_LIMITED and stores nothing.
"""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ragstream.db.models.users import User
from ragstream.domain.chat import service
from ragstream.domain.chat.quota import ChatLimits
from ragstream.domain.errors import RateLimited
from ragstream.settings import Settings


class ServerSlots:
    """Answers admitted in this process and not yet ended: being stored, or generated."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.active = 0
        self.accepting = False  # off before start-up and from the start of a shutdown

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
        if self.active >= self.cap:
            raise RateLimited(
                "the server is generating as many answers as it can; try again in a moment",
                extensions={
                    "reason": "SERVER_BUSY",
                    "limit": self.cap,
                    # Frees up as soon as any running answer ends.
                    "resetAt": None,
                },
            )
        self.active += 1

    def give_back(self) -> None:
        self.active -= 1


def chat_limits(settings: Settings) -> ChatLimits:
    return ChatLimits(
        daily_messages=settings.daily_message_limit,
        concurrent_generations=settings.chat_max_concurrent_generations,
    )


async def store_exchange(
    sessionmaker: async_sessionmaker[AsyncSession],
    settings: Settings,
    viewer: User,
    *,
    answer_id: uuid.UUID,
    conversation_id: uuid.UUID,
    content: str,
    model: str,
    generator_id: uuid.UUID,
) -> service.NewExchange:
    """Stores the viewer's question and the empty answer ``answer_id`` (STREAMING, generated
    by the process ``generator_id``), in one transaction, if the viewer's limits allow it
    (RATE_LIMITED otherwise)."""
    async with sessionmaker.begin() as session:
        return await service.start_exchange(
            session,
            viewer,
            answer_id=answer_id,
            conversation_id=conversation_id,
            content=content,
            limits=chat_limits(settings),
            max_chars=settings.chat_max_message_chars,
            model=model,
            generator_id=generator_id,
        )
