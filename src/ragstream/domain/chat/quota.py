"""Per-user limits on chat: questions per UTC day and answers generated at the same time.

The limits come from the viewer's `chat` feature (see domain/flags and admission.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from ragstream.db.models.users import User
from ragstream.db.repositories.chat import MessageRepository
from ragstream.domain.errors import RateLimited


@dataclass(frozen=True)
class ChatLimits:
    daily_messages: int | None  # None: no daily limit
    concurrent_generations: int


def utc_day(now: datetime | None = None) -> tuple[datetime, datetime]:
    """Start of the current UTC day and start of the next one."""
    now = now or datetime.now(UTC)
    start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return start, start + timedelta(days=1)


async def check_can_send(
    repo: MessageRepository,
    viewer: User,
    limits: ChatLimits,
    *,
    day: date,
) -> None:
    """Raises RATE_LIMITED with ``limit`` and ``resetAt`` when the viewer may not ask on ``day``.

    The caller holds the viewer's send lock (`service.conversation_to_send_in` takes it) until
    the transaction ends, so two sends racing for the last allowed message cannot both pass.
    Questions are counted in the usage ledger, which deleting conversations does not touch.
    """
    # Counted after the lock is held (a statement of its own: its snapshot sees the sends that
    # held the lock before), both counts at once.
    used, running = await repo.sending_counts(viewer.id, day)
    if limits.daily_messages is not None:
        reset = datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1)
        if used >= limits.daily_messages:
            raise RateLimited(
                f"daily message limit of {limits.daily_messages} reached",
                extensions={
                    "reason": "DAILY_MESSAGE_LIMIT",
                    "limit": limits.daily_messages,
                    "resetAt": reset.isoformat(),
                },
            )
    if running >= limits.concurrent_generations:
        raise RateLimited(
            f"at most {limits.concurrent_generations} answers can be generated at once",
            extensions={
                "reason": "CONCURRENT_GENERATIONS",
                "limit": limits.concurrent_generations,
                # Frees up as soon as one of the running answers ends.
                "resetAt": None,
            },
        )
