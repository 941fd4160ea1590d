"""The hottest reads, compiled once and run on the driver's connection.

Every signed-in request runs the viewer check, and every page load reads a list: through a
session, each statement pays for SQLAlchemy's execution machinery (cache key, execution
context, result metadata, greenlet hops) several times over what asyncpg itself costs. A
`DriverStatement` is a Core SELECT compiled once for the engine's dialect: its SQL text, the
order of its parameters with their bind processors and literal values, and its columns' result
processors. It runs on the asyncpg connection under a session's (the same connection; inside
its transaction once SQLAlchemy has begun one) or on a `DriverLease`, a pooled connection taken
without a session by a request that only reads, and returns rows exactly as SQLAlchemy would
have processed them.

The same holds for the few writes every chat exchange makes (a question stored, an answer
ended): written as one SELECT over data-modifying CTEs, they run the same way, inside the
session's transaction (`writes`).

The SQL still lives in the repositories, written with Core like every other statement; only
where it runs changes. A connection found dead (a database restart) is invalidated with the
rest of the pool and reported as SQLAlchemy's ``DBAPIError`` marked ``connection_invalidated``,
so callers see what they saw before; a statement cancelled halfway (the client went away)
invalidates its connection, which asyncpg may still be busy with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import CompoundSelect, Select, TextualSelect, text
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import AsyncAdaptedQueue

from ragstream.db.unit_of_work import mark_written

Processor = Callable[[Any], Any] | None

# What asyncpg raises for a connection that is gone (terminated backend, restart, network):
# some are PostgresErrors too, so they are told apart before those.
_DISCONNECTED = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    OSError,
)


def _gone(error: BaseException, driver: asyncpg.Connection) -> bool:
    """Whether ``error`` means the connection is gone (a cancellation never does)."""
    return isinstance(error, Exception) and (isinstance(error, _DISCONNECTED) or driver.is_closed())


class DriverLease:
    """A pooled connection checked out for driver statements alone: no session, no
    transaction (each statement is its own, as under a session in autocommit), a fraction of
    a session's cost to take and give back. For requests that only read."""

    def __init__(self, engine: AsyncEngine, pooled: PoolProxiedConnection) -> None:
        self.engine = engine
        self.pooled = pooled
        # What the engine's statement listeners get for a connection: the pooled connection
        # (``.connection``, as on a Connection) and its engine.
        self.view = SimpleNamespace(connection=pooled, engine=engine.sync_engine)

    @classmethod
    async def checkout(cls, engine: AsyncEngine) -> DriverLease:
        """Waits for the pool like a session does (a pool timeout raises the same error)."""
        return cls(engine, await engine.raw_connection())

    @property
    def usable(self) -> bool:
        return self.pooled.is_valid

    async def release(self) -> None:
        if self._returns_at_once():
            self.pooled.close()
            return
        # In SQLAlchemy's greenlet: returning it may close it (a pool already full closes an
        # overflow connection), which awaits asyncpg.
        await greenlet_spawn(self.pooled.close)

    def _returns_at_once(self) -> bool:
        """Whether giving the connection back awaits nothing, so it needs no greenlet (one
        spawned per release was about 2 % of a prepared read): the connection is valid, no
        transaction was begun through SQLAlchemy's adapter (the reset on return, a rollback,
        then sends nothing), and the pool's queue has room for it (a full one closes it)."""
        queue = getattr(self.engine.sync_engine.pool, "_pool", None)
        return (
            self.pooled.is_valid
            and getattr(self.pooled.dbapi_connection, "_transaction", True) is None
            and isinstance(queue, AsyncAdaptedQueue)
            and not queue.full()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves it untyped
        )


# Where driver statements run: a session's connection, or a lease.
DriverTarget = AsyncSession | DriverLease


class DriverStatement:
    """``statement`` compiled for the engine's dialect on first use; see the module."""

    def __init__(
        self,
        statement: Select[*tuple[Any, ...]] | CompoundSelect[*tuple[Any, ...]] | TextualSelect,
        *,
        writes: bool = False,
        begins: bool = False,
    ) -> None:
        self.statement = statement
        self.keys: Sequence[str] = tuple(statement.selected_columns.keys())
        # A statement that writes (data-modifying CTEs), or whose effect lasts until the
        # transaction ends (``begins``: `set_config(..., true)`), runs in the session's
        # database transaction, begun first if no statement has begun it yet, as SQLAlchemy's
        # own statements do; a read runs without one when none is open (no BEGIN to send).
        # A write also marks the transaction as one (`unit_of_work`), so it is committed.
        self.writes = writes
        self.begins = begins or writes
        self._compiled: tuple[Dialect, _Compiled] | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None or self._compiled[0] is not dialect:
            self._compiled = (dialect, _Compiled(self.statement, dialect))
        return self._compiled[1]

    async def fetch(self, on: DriverTarget, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """The statement's rows with ``params`` (by bind name), on ``on``'s connection."""
        if isinstance(on, DriverLease):
            return await self._fetch_leased(on, params)
        connection = await on.connection()
        sync = connection.sync_connection
        assert sync is not None  # an open AsyncConnection has one
        raw = await connection.get_raw_connection()
        compiled = self.compiled(sync.dialect)
        events = sync.dispatch if sync._has_events or sync.engine._has_events else None
        driver = raw.driver_connection
        try:
            if self.begins:
                adapter = raw.dbapi_connection
                if adapter is not None and adapter._transaction is None:
                    await adapter._start_transaction()  # nothing to begin under AUTOCOMMIT
            rows = await compiled.run(driver, params, events, sync, sync.dialect)
        except Exception as error:
            if _gone(error, driver):
                # SQLAlchemy, finding the connection dead, invalidates the pool's connections
                # and raises a DBAPIError marked `connection_invalidated`, as for its own
                # statements.
                await connection.execute(text("SELECT 1"))
            elif not isinstance(error, asyncpg.PostgresError):
                await connection.invalidate()  # asyncpg may be in the middle of it
            raise  # a PostgresError: the statement failed, the connection is fine
        except BaseException:
            # Cancelled halfway through (the BEGIN or the statement): asyncpg may still be
            # busy with it, or hold a transaction the adapter does not know of.
            await connection.invalidate()
            raise
        if self.writes:
            mark_written(on)
        return rows

    async def _fetch_leased(
        self, lease: DriverLease, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        engine = lease.engine.sync_engine
        compiled = self.compiled(engine.dialect)
        events = engine.dispatch if engine._has_events else None
        driver = lease.pooled.driver_connection
        try:
            return await compiled.run(driver, params, events, lease.view, engine.dialect)
        except Exception as error:
            if _gone(error, driver):
                # As SQLAlchemy does for its own statements: every connection of the pool
                # opened before this one is discarded on its next checkout, and the caller
                # learns that the connection was invalidated (the viewer check retries once).
                engine.pool._invalidate(lease.pooled, error)
                raise DBAPIError(
                    compiled.sql, None, error, hide_parameters=True, connection_invalidated=True
                ) from error
            if not isinstance(error, asyncpg.PostgresError):
                lease.pooled.invalidate(error)  # asyncpg may be in the middle of it
            raise  # a PostgresError: the statement failed, the connection is fine
        except BaseException:
            # Cancelled halfway through: asyncpg may still be busy with the statement.
            lease.pooled.invalidate()
            raise


class _Compiled:
    def __init__(
        self,
        statement: Select[*tuple[Any, ...]] | CompoundSelect[*tuple[Any, ...]] | TextualSelect,
        dialect: Dialect,
    ) -> None:
        compiled = statement.compile(dialect=dialect)
        if dialect.paramstyle != "numeric_dollar" or compiled.positiontup is None:
            raise TypeError(f"{dialect.name} does not compile to asyncpg's numbered parameters")
        self.sql = compiled.string
        self.names: Sequence[str] = tuple(compiled.positiontup)
        binds = compiled.binds  # by the names the SQL text uses
        self.processors: list[Processor] = [
            binds[name].type._cached_bind_processor(dialect) for name in self.names
        ]
        # Values written into the statement (e.g. a literal scope), processed once.
        self.fixed: dict[str, Any] = {}
        for name, processor in zip(self.names, self.processors, strict=True):
            bind = binds[name]
            if not bind.required and bind.callable is None:
                self.fixed[name] = bind.value if processor is None else processor(bind.value)
        self.result_types = [column[3] for column in compiled._result_columns]
        self.dialect = dialect
        # Set by `describe`: what a column's processor does can depend on its database type.
        self.results: list[Processor] | None = None
        self.processed: list[tuple[int, Callable[[Any], Any]]] = []
        self.plain = False

    def describe(self, prepared: asyncpg.prepared_stmt.PreparedStatement) -> None:
        oids = [attribute.type.oid for attribute in prepared.get_attributes()]
        self.results = [
            column_type._cached_result_processor(self.dialect, oid)
            for column_type, oid in zip(self.result_types, oids, strict=True)
        ]
        self.plain = all(processor is None for processor in self.results)
        # The columns that have a processor, with it: most columns of a row have none.
        self.processed = [
            (index, processor)
            for index, processor in enumerate(self.results)
            if processor is not None
        ]

    async def run(
        self,
        driver: asyncpg.Connection,
        params: Mapping[str, Any],
        events: Any,
        connection: Connection | SimpleNamespace,
        dialect: Dialect,
    ) -> list[tuple[Any, ...]]:
        """Runs on ``driver``; the engine's statement events (traces, statement counts) are
        told, as for SQLAlchemy's own statements, when ``events`` has listeners."""
        arguments = self.arguments(params)
        context = SimpleNamespace()
        if events is not None:
            events.before_cursor_execute(connection, None, self.sql, arguments, context, False)
        try:
            if self.results is None:
                self.describe(await driver.prepare(self.sql))
            records = await driver.fetch(self.sql, *arguments)
        except BaseException as error:  # a cancelled statement's trace span ends too
            if dialect._has_events:
                dialect.dispatch.handle_error(
                    SimpleNamespace(execution_context=context, original_exception=error)
                )
            raise
        if events is not None:
            events.after_cursor_execute(connection, None, self.sql, arguments, context, False)
        return self.rows(records)

    def arguments(self, params: Mapping[str, Any]) -> list[Any]:
        fixed = self.fixed
        arguments = []
        for name, processor in zip(self.names, self.processors, strict=True):
            if name in params:
                value = params[name]
                arguments.append(value if processor is None else processor(value))
            else:
                arguments.append(fixed[name])
        return arguments

    def rows(self, records: list[asyncpg.Record]) -> list[tuple[Any, ...]]:
        if self.plain:
            return [tuple(record) for record in records]
        processed = self.processed
        rows: list[tuple[Any, ...]] = []
        for record in records:
            row = list(record)
            for index, processor in processed:
                value = row[index]
                if value is not None:
                    row[index] = processor(value)
            rows.append(tuple(row))
        return rows
