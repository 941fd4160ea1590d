"""Whether a session's current transaction changed anything, so a read-only one need not commit.

Objects waiting to be flushed make it a write. So does a flush that wrote rows, or any statement
other than a plain SELECT through the session (an UPDATE, a DELETE, a ``text()`` statement such
as ``SET LOCAL`` or an advisory lock): they mark the transaction, and the mark is cleared when
the transaction ends. A repository that writes otherwise says so (``mark_written``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

_WROTE = "ragstream.wrote"


def wrote(session: AsyncSession) -> bool:
    """True when committing would change something: writes already sent, or objects added,
    changed or deleted but not flushed yet (the commit flushes them)."""
    if session.new or session.dirty or session.deleted:
        return True
    return bool(session.sync_session.info.get(_WROTE)) and session.in_transaction()


def mark_written(session: AsyncSession) -> None:
    """Mark the transaction as a write, for what the session cannot tell is one: a statement
    run on its connection directly, or a SELECT whose CTEs insert."""
    session.sync_session.info[_WROTE] = True


@event.listens_for(Session, "after_flush")
def _after_flush(session: Session, flush_context: Any) -> None:
    session.info[_WROTE] = True


@event.listens_for(Session, "do_orm_execute")
def _on_execute(state: ORMExecuteState) -> None:
    if not state.is_select:
        state.session.info[_WROTE] = True


@event.listens_for(Session, "after_transaction_end")
def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_WROTE, None)
