"""The application state: the long-lived collaborators every request, job and command shares.

Its own module, below the schema and the view: they take it as a parameter, and only the app
factory (app.py) and the commands build it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import strawberry
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from ragstream.db.embedded import EmbeddedDatabase
from ragstream.domain.chat.generation import GenerationManager
from ragstream.domain.events import EventBroker, InMemoryBroker
from ragstream.domain.llm.embeddings import Embedder
from ragstream.domain.users.auth import AuthService
from ragstream.domain.users.tokens import TokenService
from ragstream.settings import ConfigurationError, Settings
from ragstream.socket_limits import SocketRegistry
from ragstream.workpool import WorkPool


@dataclass
class AppState:
    """Long-lived collaborators shared by all requests. Set up in the lifespan."""

    settings: Settings
    schema: strawberry.Schema
    tokens: TokenService
    auth: AuthService
    chat: GenerationManager
    sockets: SocketRegistry  # open websockets per client address and per user
    engine: AsyncEngine | None = None
    sessionmaker_: async_sessionmaker[AsyncSession] | None = None
    embedded: EmbeddedDatabase | None = None
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    database_url: str | None = None
    embedder_: Embedder | None = None
    # Worker processes for CPU-heavy work (parsing, chunking, offline embedding).
    work_: WorkPool | None = None
    # In-process pub/sub (document events, chat streams); a Redis broker can take its place.
    broker: EventBroker = field(default_factory=InMemoryBroker)
    # A configuration error that stopped the lifespan from starting (serve reports it, exit 2).
    startup_error: ConfigurationError | None = None

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        if self.sessionmaker_ is None:
            raise RuntimeError("the database is not connected yet")
        return self.sessionmaker_

    @property
    def work(self) -> WorkPool:
        if self.work_ is None:
            raise RuntimeError("the worker processes are not set up yet")
        return self.work_

    @property
    def embedder(self) -> Embedder:
        if self.embedder_ is None:
            raise RuntimeError("the embedding provider is not set up yet")
        return self.embedder_
