"""All SQL about server processes: their leases, and the answers left by expired ones.

Every time is the database's clock (`now()`), so processes on machines whose clocks differ
still agree on which leases have expired.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert

from ragstream.db.models.chat import Message, ServerProcess
from ragstream.db.repositories.base import Repository
from ragstream.domain.chat.enums import FailureCode, MessageStatus


@dataclass(frozen=True)
class Generator:
    """Who generates a running answer, and whether its lease still holds."""

    process_id: uuid.UUID | None
    alive: bool


def _lease_end(seconds: float) -> ColumnElement[datetime]:
    return func.now() + timedelta(seconds=seconds)


class ProcessRepository(Repository):
    async def renew(self, process_id: uuid.UUID, *, hostname: str, pid: int, lease: float) -> None:
        """Registers the process, or extends its lease by ``lease`` seconds from now."""
        stmt = insert(ServerProcess).values(
            id=process_id, hostname=hostname, pid=pid, lease_expires_at=_lease_end(lease)
        )
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[ServerProcess.id],
                set_={"lease_expires_at": stmt.excluded.lease_expires_at},
            )
        )

    async def release(self, process_id: uuid.UUID) -> None:
        """The process is stopping and has stored the end of every answer it generated."""
        await self.session.execute(delete(ServerProcess).where(ServerProcess.id == process_id))

    async def forget_all(self) -> None:
        """Drops every lease: only for a process that knows no other server uses the database
        (the one holding the embedded database's data-dir lock)."""
        await self.session.execute(delete(ServerProcess))

    async def interrupt_orphans(self) -> list[uuid.UUID]:
        """Marks INTERRUPTED (text kept) every running answer whose generator's lease has
        expired, or that has no generator; drops the expired leases. Returns the answers."""
        await self.session.execute(
            delete(ServerProcess).where(ServerProcess.lease_expires_at <= func.now())
        )
        live = exists().where(
            ServerProcess.id == Message.generator_id,
            ServerProcess.lease_expires_at > func.now(),
        )
        result = await self.session.execute(
            update(Message)
            .where(Message.status == MessageStatus.STREAMING, ~live)
            .values(
                status=MessageStatus.INTERRUPTED,
                error_code=FailureCode.INTERRUPTED,
                completed_at=func.now(),
                updated_at=func.now(),
            )
            .returning(Message.id),
            # The sweep's own session holds no message: nothing to synchronise.
            execution_options={"synchronize_session": False},
        )
        return list(result.scalars())

    async def generator_of(self, message_id: uuid.UUID) -> Generator:
        row = (
            await self.session.execute(
                select(
                    Message.generator_id,
                    (ServerProcess.lease_expires_at > func.now()).label("alive"),
                )
                .outerjoin(ServerProcess, ServerProcess.id == Message.generator_id)
                .where(Message.id == message_id)
            )
        ).one_or_none()
        if row is None:
            return Generator(None, alive=False)
        return Generator(row.generator_id, alive=bool(row.alive))

    async def live(self) -> int:
        """How many processes hold a lease now."""
        count = await self.session.scalar(
            select(func.count())
            .select_from(ServerProcess)
            .where(ServerProcess.lease_expires_at > func.now())
        )
        return int(count or 0)
