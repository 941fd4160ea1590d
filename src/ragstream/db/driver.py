"""The hottest reads, compiled once and run on the driver's connection.

Every signed-in request runs the viewer check, and every page load reads a list: through a
session, each statement pays for SQLAlchemy's execution machinery (cache key, execution
context, result metadata, greenlet hops) several times over what asyncpg itself costs. A
`DriverStatement` is a Core SELECT compiled once for the engine's dialect: its SQL text, the
order of its parameters with their bind processors and literal values, and its columns' result
processors. It runs on the asyncpg connection under the session's (same connection, same
transaction if one is open), and returns rows exactly as SQLAlchemy would have processed them.

The SQL still lives in the repositories, written with Core like every other statement; only
where it runs changes. A connection found dead (a database restart) is handed back to
SQLAlchemy, which invalidates it with the rest of the pool and raises its usual
``DBAPIError``, so callers see what they saw before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import asyncpg
from sqlalchemy import Select, text
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

Processor = Callable[[Any], Any] | None

# What asyncpg raises for a connection that is gone (terminated backend, restart, network).
_DISCONNECTED = (asyncpg.exceptions.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)


class DriverStatement:
    """``statement`` compiled for ``dialect`` on first use; see the module."""

    def __init__(self, statement: Select[Any]) -> None:
        self.statement = statement
        self.keys: Sequence[str] = tuple(statement.selected_columns.keys())
        self._compiled: tuple[Dialect, _Compiled] | None = None

    def compiled(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None or self._compiled[0] is not dialect:
            self._compiled = (dialect, _Compiled(self.statement, dialect))
        return self._compiled[1]

    async def fetch(
        self, session: AsyncSession, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """The statement's rows with ``params`` (by bind name) on ``session``'s connection."""
        connection = await session.connection()
        compiled = self.compiled(connection.dialect)
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        arguments = compiled.arguments(params)
        # The engine's statement events (traces, statement counts) see this statement too.
        sync = connection.sync_connection
        assert sync is not None  # an open AsyncConnection has one
        events = sync.dispatch if sync._has_events or sync.engine._has_events else None
        context = SimpleNamespace()
        if events is not None:
            events.before_cursor_execute(sync, None, compiled.sql, arguments, context, False)
        try:
            if compiled.results is None:
                compiled.describe(await driver.prepare(compiled.sql))
            records = await driver.fetch(compiled.sql, *arguments)
        except Exception as error:
            if sync.dialect._has_events:
                sync.dialect.dispatch.handle_error(
                    SimpleNamespace(execution_context=context, original_exception=error)
                )
            if isinstance(error, _DISCONNECTED):
                # SQLAlchemy, finding the connection dead, invalidates the pool's connections
                # and raises a DBAPIError marked `connection_invalidated`, as for its own
                # statements.
                await connection.execute(text("SELECT 1"))
            raise
        if events is not None:
            events.after_cursor_execute(sync, None, compiled.sql, arguments, context, False)
        return compiled.rows(records)


class _Compiled:
    def __init__(self, statement: Select[Any], dialect: Dialect) -> None:
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
        self.plain = False

    def describe(self, prepared: asyncpg.prepared_stmt.PreparedStatement) -> None:
        oids = [attribute.type.oid for attribute in prepared.get_attributes()]
        self.results = [
            column_type._cached_result_processor(self.dialect, oid)
            for column_type, oid in zip(self.result_types, oids, strict=True)
        ]
        self.plain = all(processor is None for processor in self.results)

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
        processors = self.results
        assert processors is not None  # described before the first fetch
        return [
            tuple(
                value if processor is None or value is None else processor(value)
                for value, processor in zip(record, processors, strict=True)
            )
            for record in records
        ]
