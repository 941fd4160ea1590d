"""The typed per-request (per-socket for websockets) context every resolver receives."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.websockets import WebSocket

from ragstream.db.models import User
from ragstream.domain.errors import Unauthenticated
from ragstream.domain.users.service import resolve_viewer
from ragstream.domain.users.tokens import AccessClaims
from ragstream.schema.loaders import Loaders
from ragstream.state import AppState


@dataclass
class Context:
    state: AppState
    request: Request | WebSocket
    request_id: str
    claims: AccessClaims | None = None
    token_invalid: bool = False
    connection_params: dict[str, Any] | None = None
    # Run when a websocket ends (e.g. giving back its place under the open-socket limit).
    on_close: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _viewer: User | None = field(default=None, repr=False)
    # DataLoaders for nested fields; see schema/loaders.py for why websockets do not cache.
    loaders: Loaders = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self, cache=not self.is_websocket)

    @property
    def is_websocket(self) -> bool:
        return isinstance(self.request, WebSocket)

    @property
    def client_address(self) -> str:
        client = self.request.client
        return client.host if client else "unknown"

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: committed when the block succeeds, rolled back when it raises.

        A change that must stay although the operation is refused (a reused refresh token
        revokes its family) is returned by the domain, not raised: the block ends normally and
        the caller raises after the commit.
        """
        async with self.state.sessionmaker() as session:
            try:
                yield session
            except BaseException:
                await session.rollback()
                raise
            else:
                await session.commit()

    def require_claims(self) -> AccessClaims:
        if self.claims is None or self.token_invalid:
            raise Unauthenticated("authentication required")
        # A websocket outlives its token: re-check expiry on every operation.
        if self.claims.expires_at <= datetime.now(UTC):
            raise Unauthenticated("access token expired")
        return self.claims

    async def viewer(self) -> User:
        """The signed-in user, reloaded so a deactivated account or a revoked session stops at once.

        Cached per HTTP request; a websocket reloads it for every operation.
        """
        claims = self.require_claims()
        if self._viewer is not None and not self.is_websocket:
            return self._viewer
        async with self.state.sessionmaker() as session:
            user = await resolve_viewer(session, claims.user_id, claims.session_id)
        if user is None:
            raise Unauthenticated("authentication required")
        self._viewer = user
        return user


# The resolver `info` of every field: declared once, here.
Info = strawberry.Info[Context, None]
