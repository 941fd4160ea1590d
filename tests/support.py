"""Test helpers: a live server on the test's event loop and a `gql` client that keeps errors."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import uvicorn
from gql import Client, GraphQLRequest
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport
from starlette.applications import Starlette

from ragstream.app import AppState, create_app

try:  # gql's HTTP transport runs on httpx2 where it is installed (openai brings it), else on httpx
    import httpx2 as gql_httpx
except ModuleNotFoundError:  # pragma: no cover
    import httpx as gql_httpx  # type: ignore[no-redef]
from ragstream.settings import Settings
from ragstream.ws_compression import WebSocketProtocol

PASSWORD = "correct horse battery"
# Built once and shared: each client's default TLS context loads the CA bundle (tens of
# milliseconds of CPU), and the tests make thousands of clients for plain-HTTP loopback requests.
LOOPBACK_TLS = ssl.create_default_context()
STOP_WITHIN = 60.0
# gql gives an operation 10 s by default; a busy machine running the suite in parallel needs more.
OPERATION_TIMEOUT = 60


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
    """The app with its lifespan running on the test's event loop.

    Requests go in-process through httpx's ASGI transport: real HTTP requests and responses
    through the whole middleware stack, without a socket. Websockets need one, so the first
    websocket starts uvicorn on a free loopback port beside it. ``listen=True`` sends everything
    through uvicorn: the end-to-end tests. A server that was never started here (a `ragstream
    serve` subprocess) is reached over the network at ``port``.
    """

    def __init__(self, app: Starlette, *, listen: bool = False) -> None:
        self.app = app
        self.listen_only = listen
        self.server: uvicorn.Server | None = None
        self.task: asyncio.Task[None] | None = None
        self.port = 0
        self.remote = False  # in another process: never served from here
        self._lifespan: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def state(self) -> AppState:
        state: AppState = self.app.state.ragstream
        return state

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}" if self.port else "http://127.0.0.1"

    @property
    def graphql_url(self) -> str:
        return f"{self.http_url}/graphql"

    @property
    def ws_url(self) -> str:
        if not self.port:
            raise RuntimeError("not listening: use the live_server fixture or websocket()")
        return f"ws://127.0.0.1:{self.port}/graphql"

    async def start(self) -> None:
        if self.listen_only:
            await self._serve(lifespan="on")
            return
        # The lifespan runs in a task of its own from start-up to shutdown, as under uvicorn.
        started = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lifespan = asyncio.create_task(self._run_lifespan(started, self._stopping))
        waiting = asyncio.create_task(started.wait())
        await asyncio.wait({self._lifespan, waiting}, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        if self._lifespan.done():
            self._lifespan.result()  # start-up failed: raise its error

    async def _run_lifespan(self, started: asyncio.Event, stopping: asyncio.Event) -> None:
        async with self.app.router.lifespan_context(self.app):
            started.set()
            await stopping.wait()

    @classmethod
    def elsewhere(cls, port: int) -> LiveServer:
        """A server running in another process (`ragstream serve`), reached at ``port``."""
        server = cls(Starlette())
        server.port = port
        server.remote = True
        return server

    async def listen(self) -> None:
        """Serve the running app on a loopback port too (for websockets)."""
        if self.server is None and not self.remote:
            await self._serve(lifespan="off")

    async def _serve(self, *, lifespan: Literal["on", "off"]) -> None:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan=lifespan,
            ws=WebSocketProtocol,  # as `ragstream serve` has it
        )
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if self.task.done():
                self.task.result()
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        # A generous guard: a shutdown that hangs fails its test instead of stalling the run.
        async with asyncio.timeout(STOP_WITHIN):
            if self.server is not None:
                assert self.task is not None
                self.server.should_exit = True
                await self.task
            if self._lifespan is not None:
                self._stopping.set()
                await self._lifespan

    def _transport(self, http: Any, client_address: str | None) -> Any:
        """A transport of ``http`` (httpx, or gql's httpx2) that reaches this app; the app sees the
        request come from ``client_address``."""
        if self._lifespan is not None:
            # An unexpected exception becomes a 500 response, as uvicorn would answer.
            return http.ASGITransport(
                self.app, raise_app_exceptions=False, client=(client_address or "127.0.0.1", 40000)
            )
        return http.AsyncHTTPTransport(local_address=client_address, verify=LOOPBACK_TLS)

    def http_client(
        self, *, client_address: str | None = None, timeout: float = 30
    ) -> httpx.AsyncClient:
        transport: httpx.AsyncBaseTransport = self._transport(httpx, client_address)
        return httpx.AsyncClient(base_url=self.http_url, transport=transport, timeout=timeout)

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
        transport = HTTPXAsyncTransport(
            url=self.graphql_url,
            headers=all_headers,
            timeout=OPERATION_TIMEOUT,
            transport=self._transport(gql_httpx, None),
        )
        async with Client(
            transport=transport,
            fetch_schema_from_transport=False,
            execute_timeout=OPERATION_TIMEOUT,
        ) as session:
            try:
                data = await session.execute(GraphQLRequest(query, variable_values=variables))
            except TransportQueryError as exc:
                return Result(data=exc.data, errors=list(exc.errors or []))
        return Result(data=data)

    @contextlib.asynccontextmanager
    async def websocket(
        self, token: str | None = None, *, init_payload: dict[str, Any] | None = None
    ) -> AsyncIterator[Any]:
        await self.listen()
        payload = init_payload if init_payload is not None else {}
        if token is not None:
            payload = {**payload, "authorization": f"Bearer {token}"}
        transport = WebsocketsTransport(
            url=self.ws_url,
            init_payload=payload,
            subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
        )
        async with Client(
            transport=transport,
            fetch_schema_from_transport=False,
            execute_timeout=OPERATION_TIMEOUT,
        ) as session:
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
async def running_server(settings: Settings, *, listen: bool = False) -> AsyncIterator[LiveServer]:
    server = LiveServer(create_app(settings), listen=listen)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
