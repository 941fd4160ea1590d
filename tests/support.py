"""Test helpers: a live server on the test's event loop and a `gql` client that keeps errors."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from starlette.applications import Starlette

from ragstream.app import AppState, create_app
from ragstream.settings import Settings

PASSWORD = "correct horse battery"


@dataclass
class Result:
    data: dict[str, Any] | None
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def codes(self) -> list[str]:
        return [e.get("extensions", {}).get("code", "") for e in self.errors]

    @property
    def code(self) -> str:
        assert len(self.errors) == 1, self.errors
        return self.codes[0]

    def ok(self) -> dict[str, Any]:
        assert not self.errors, self.errors
        assert self.data is not None
        return self.data


@dataclass
class Account:
    id: str
    email: str
    access_token: str
    refresh_token: str


class LiveServer:
    """A real uvicorn server on a free loopback port, running on the test's event loop."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.ragstream
        return state

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def graphql_url(self) -> str:
        return f"{self.http_url}/graphql"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def start(self) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        assert self.task is not None
        self.server.should_exit = True
        await self.task

    async def execute(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Result:
        """One operation over HTTP with the gql client; GraphQL errors are returned, not raised."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        transport = HTTPXAsyncTransport(url=self.graphql_url, headers=all_headers, timeout=30)
        async with Client(transport=transport, fetch_schema_from_transport=False) as session:
            try:
                data = await session.execute(GraphQLRequest(query, variable_values=variables))
            except TransportQueryError as exc:
                return Result(data=exc.data, errors=list(exc.errors or []))
        return Result(data=data)

    @contextlib.asynccontextmanager
    async def websocket(
        self, token: str | None = None, *, init_payload: dict[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        payload = init_payload if init_payload is not None else {}
        if token is not None:
            payload = {**payload, "authorization": f"Bearer {token}"}
        transport = WebsocketsTransport(
            url=self.ws_url,
            init_payload=payload,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        )
        async with Client(transport=transport, fetch_schema_from_transport=False) as session:
            yield session

    async def register(
        self, email: str | None = None, password: str = PASSWORD, name: str = "Test User"
    ) -> Account:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.com"
        data = (
            await self.execute(
                """mutation($input: RegisterInput!) {
                     register(input: $input) { accessToken refreshToken user { id email } }
                   }""",
                {"input": {"email": email, "password": password, "displayName": name}},
            )
        ).ok()["register"]
        return Account(
            id=data["user"]["id"],
            email=data["user"]["email"],
            access_token=data["accessToken"],
            refresh_token=data["refreshToken"],
        )

    async def make_admin(self, account: Account) -> None:
        from sqlalchemy import text

        async with self.state.sessionmaker.begin() as session:
            await session.execute(
                text("UPDATE users SET role = 'ADMIN' WHERE id = :id"), {"id": account.id}
            )


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[LiveServer]:
    server = LiveServer(create_app(settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
