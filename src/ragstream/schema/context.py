"""The typed per-request (per-socket for websockets) context every resolver receives."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import strawberry
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.websockets import WebSocket

from ragstream.db.driver import DriverLease, DriverTarget
from ragstream.db.engine import AUTOCOMMIT
from ragstream.db.models import User
from ragstream.db.unit_of_work import wrote
from ragstream.domain.errors import Unauthenticated
from ragstream.domain.flags.service import SignedIn, resolve_signed_in
from ragstream.domain.users.tokens import AccessClaims
from ragstream.schema.loaders import Loaders
from ragstream.state import AppState


@dataclass
class Context:
    """One HTTP request, or one websocket (whose operations each get their own units of work).

    An HTTP request holds at most one database session, opened by its first read and closed by
    `close` when the response is ready: the viewer check, every resolver and every DataLoader
    share its connection, one block at a time.
    """

    state: AppState
    request: Request | WebSocket
    request_id: str
    claims: AccessClaims | None = None
    token_invalid: bool = False
    connection_params: dict[str, Any] | None = None
    # Run when a websocket ends (e.g. giving back its place under the open-socket limit).
    on_close: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _signed_in: SignedIn | None = field(default=None, repr=False)
    _session: AsyncSession | None = field(default=None, repr=False)
    _lease: DriverLease | None = field(default=None, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)
    _autocommit: bool = field(default=False, repr=False)
    # Set when a compiled plan (schema/compiled.py) produced the operation's data.
    answered_by_plan: bool = field(default=False, repr=False)
    _loaders: Loaders | None = field(default=None, init=False, repr=False)
    # Asked several times per request; an isinstance check through Starlette's ABCs each time.
    is_websocket: bool = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.is_websocket = isinstance(self.request, WebSocket)

    @property
    def loaders(self) -> Loaders:
        """DataLoaders for nested fields, made on first use (most requests need none); see
        schema/loaders.py for why websockets do not cache."""
        if self._loaders is None:
            self._loaders = Loaders(self, cache=not self.is_websocket)
        return self._loaders

    @property
    def client_address(self) -> str:
        client = self.request.client
        return client.host if client else "unknown"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block succeeds and wrote something, rolled back
        when it raises. A block that only read leaves the request's transaction open for the
        next block, so a read-only request is one transaction that ends with the request (or,
        after `read_only`, no transaction at all).

        A change that must stay although the operation is refused (a reused refresh token
        revokes its family) is returned by the domain, not raised: the block ends normally and
        the caller raises after the commit.
        """
        if self.is_websocket or self._closed:
            # A socket's operations run concurrently and outlive one another, as does an
            # event stream after its request: each block has its own session.
            async with self.state.sessionmaker() as session, _unit_of_work(session):
                yield session
            return
        async with self._lock:
            if self._session is None:
                await self._drop_lease()  # one connection at a time
                self._session = self.state.sessionmaker()
                if self._autocommit:
                    await self._session.connection(execution_options=AUTOCOMMIT)
            async with _unit_of_work(self._session):
                yield self._session

    @contextlib.asynccontextmanager
    async def reads(self) -> AsyncIterator[DriverTarget]:
        """Where driver statements (db/driver.py) run: in an HTTP request that only reads (see
        `read_only`) and has no session open, a pooled connection taken without a session,
        kept for the request's next reads; otherwise as `transaction`."""
        if self.is_websocket or self._closed or not self._autocommit:
            async with self.transaction() as session:
                yield session
            return
        async with self._lock:
            if self._session is not None:
                yield self._session
                return
            if self._lease is not None and not self._lease.usable:
                await self._drop_lease()  # invalidated (the database went away, a cancel)
            if self._lease is None:
                engine = self.state.engine
                if engine is None:
                    raise RuntimeError("the database is not connected yet")
                self._lease = await DriverLease.checkout(engine)
            yield self._lease

    def read_only(self) -> None:
        """Declare that this HTTP request only reads. Its session, opened by the first read,
        then runs each statement on its own: no BEGIN and no ROLLBACK, two round trips fewer.
        Reads see what they would in a transaction: under READ COMMITTED every statement takes
        its own snapshot anyway. No effect once the session is open."""
        self._autocommit = True

    async def release(self) -> None:
        """End the request's transaction now (a read-only one rolls back: every write was
        committed by its block) and give the connection back to the pool; the next block opens
        another. For work that then waits on something other than the database (a password
        hash), so the wait holds no connection."""
        async with self._lock:
            await self._discard_session()

    async def close(self) -> None:
        """End the request's transaction (a read-only one rolls back) and free its connection."""
        self._closed = True
        await self.release()

    async def _discard_session(self) -> None:
        await self._drop_lease()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _drop_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()

    def require_claims(self) -> AccessClaims:
        if self.claims is None or self.token_invalid:
            raise Unauthenticated("authentication required")
        # A websocket outlives its token: re-check expiry on every operation.
        if self.claims.expires_at <= datetime.now(UTC):
            raise Unauthenticated("access token expired")
        return self.claims

    async def viewer(self) -> User:
        """The signed-in user, checked against the database so a deactivated account or a
        revoked session stops at once.

        Checked once per HTTP request; a websocket checks it for every operation.
        """
        return (await self.signed_in()).user

    async def signed_in(self) -> SignedIn:
        """The signed-in user with its feature flags, read in one statement (see `viewer`).

        Reloaded as often as the viewer, so a flag change applies to the next request and to
        the next operation on an open websocket.
        """
        claims = self.require_claims()
        checked = self._checked()
        if checked is not None:
            return checked
        operation = _OPERATION.get() if self.is_websocket else None
        if operation is None:
            return (await self._check_viewer(claims, self._viewer_alone))[1]
        async with operation.lock:  # root fields resolved at once wait for the one check
            if operation.signed_in is not None:
                return operation.signed_in
            return (await self._check_viewer(claims, self._viewer_alone))[1]

    @property
    def viewer_checked(self) -> bool:
        """Whether `signed_in` would answer without reading (checked earlier in the request,
        or in the websocket operation)."""
        return self._checked() is not None

    def _checked(self) -> SignedIn | None:
        """The viewer as checked earlier in this request, or in this websocket operation (the
        socket's context outlives its operations: see `operation_scope`)."""
        if not self.is_websocket:
            return self._signed_in
        operation = _OPERATION.get()
        return None if operation is None else operation.signed_in

    async def signed_in_with(self, read: ViewerRead[T]) -> T:
        """What ``read`` reads together with the viewer check, in the statement that checks
        the viewer: for a request's first read, when `viewer_checked` is False. Raises as
        `signed_in` does, and the viewer is then checked for the rest of the request."""
        claims = self.require_claims()
        return (await self._check_viewer(claims, read))[1]

    async def _viewer_alone(
        self, on: DriverTarget, claims: AccessClaims
    ) -> tuple[SignedIn, SignedIn] | None:
        found = await resolve_signed_in(
            on,
            claims.user_id,
            claims.session_id,
            environment=self.state.settings.environment,
            defaults=self.state.feature_defaults,
        )
        return None if found is None else (found, found)

    async def _check_viewer(self, claims: AccessClaims, read: ViewerRead[T]) -> tuple[SignedIn, T]:
        try:
            async with self.reads() as on:
                found = await read(on, claims)
        except DBAPIError as error:
            # No pre-ping on checkout: a pooled connection that died with the database (a
            # restart) fails its first statement and is invalidated. The check is the first
            # read of the request and changes nothing, so it is retried once on a new one.
            if not error.connection_invalidated:
                raise
            await self.release()
            async with self.reads() as on:
                found = await read(on, claims)
        if found is None:
            raise Unauthenticated("authentication required")
        self._signed_in = found[0]
        operation = _OPERATION.get() if self.is_websocket else None
        if operation is not None:
            operation.signed_in = found[0]
        return found


@dataclass
class _OperationCheck:
    signed_in: SignedIn | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


# The viewer check of the websocket operation running in this task (see `operation_scope`).
_OPERATION: contextvars.ContextVar[_OperationCheck | None] = contextvars.ContextVar(
    "ragstream_operation_check", default=None
)


def operation_scope() -> None:
    """Start a websocket operation's own viewer check: its permission check and its resolver
    then share one read, and the next operation (its own task) reads again. Called first in
    the operation's task, whose context every later step of the operation inherits."""
    _OPERATION.set(_OperationCheck())


T = TypeVar("T")
# Reads the viewer check (the signed-in viewer, or None) and something else in one statement.
ViewerRead = Callable[[DriverTarget, AccessClaims], Awaitable[tuple[SignedIn, T] | None]]


@contextlib.asynccontextmanager
async def _unit_of_work(session: AsyncSession) -> AsyncIterator[None]:
    try:
        yield
    except BaseException:
        await session.rollback()
        raise
    else:
        if wrote(session):
            await session.commit()


# The resolver `info` of every field: declared once, here.
Info = strawberry.Info[Context, None]
