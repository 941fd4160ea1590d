"""Shared bench plumbing: a throwaway embedded database, the app on a loopback port, a client."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn

from ragstream.app import AppState, create_app
from ragstream.db.embedded import EmbeddedDatabase, start_embedded
from ragstream.db.migrate import upgrade_to_head
from ragstream.settings import Settings

JWT_SECRET = "bench-secret-" + "x" * 40


async def configure_server(
    database: EmbeddedDatabase, data_dir: Path, server: dict[str, str]
) -> EmbeddedDatabase:
    """The embedded server restarted with ``server`` (parameter -> value) in its
    ``postgresql.auto.conf``, for parameters such as shared_buffers that need a restart."""
    conn = await asyncpg.connect(database.libpq_uri("postgres"))
    try:
        for name, value in server.items():
            # ALTER SYSTEM takes no parameters; the names and values are the bench's own.
            await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    finally:
        await conn.close()
    await asyncio.to_thread(database.stop)
    return await asyncio.to_thread(start_embedded, data_dir)


@contextlib.asynccontextmanager
async def embedded_database(
    server: dict[str, str] | None = None,
) -> AsyncIterator[tuple[EmbeddedDatabase, str, Path]]:
    """A fresh, migrated database in a temporary data dir (removed afterwards), on a server
    with the parameters of ``server`` if given."""
    with tempfile.TemporaryDirectory(prefix="ragstream-bench-") as tmp:
        database = await asyncio.to_thread(start_embedded, Path(tmp))
        try:
            if server:
                database = await configure_server(database, Path(tmp), server)
            name = f"bench_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(database.libpq_uri("postgres"))
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()
            await asyncio.to_thread(upgrade_to_head, database.url(name))
            yield database, name, Path(tmp)
        finally:
            await asyncio.to_thread(database.stop)


def bench_settings(url: str, data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "data_dir": data_dir,
        "jwt_secret": JWT_SECRET,
        "argon2_time_cost": 2,
        "argon2_memory_kib": 19_456,
        "argon2_parallelism": 1,
        "login_attempts_per_minute": 10_000,
        # Benchmarks register and connect many users from one loopback address.
        "registrations_per_hour": 1_000_000,
        "registrations_per_hour_per_client": 1_000_000,
        "ws_max_sockets_per_address": 100_000,
        "embedding_provider": "hashing",
        # Seeding 100k chunks outlasts the default 15-minute access token.
        "access_token_ttl_seconds": 24 * 3600,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[tuple[str, AppState]]:
    """The real app on 127.0.0.1 (a free port); yields its GraphQL URL and state."""
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/graphql", app.state.ragstream
    finally:
        server.should_exit = True
        await task


async def graphql(
    client: httpx.AsyncClient,
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.post(
        url, json={"query": query, "variables": variables or {}}, headers=headers
    )
    body: dict[str, Any] = response.json()
    if body.get("errors"):
        raise RuntimeError(body["errors"])
    data: dict[str, Any] = body["data"]
    return data


async def register(client: httpx.AsyncClient, url: str) -> tuple[str, str]:
    """A new account: (user id, access token)."""
    data = await graphql(
        client,
        url,
        """mutation($input: RegisterInput!) {
             register(input: $input) { accessToken user { id } } }""",
        {
            "input": {
                "email": f"bench-{uuid.uuid4().hex[:10]}@example.com",
                "password": "bench password 123",
                "displayName": "Bench",
            }
        },
    )
    return data["register"]["user"]["id"], data["register"]["accessToken"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


@contextlib.contextmanager
def serve_process(env: dict[str, str], *arguments: str, stop_seconds: float = 60) -> Iterator[str]:
    """`ragstream serve` (with ``arguments``) in a process of its own with ``env`` (which names
    its `RAGSTREAM_PORT`) until the block ends; yields its GraphQL URL. Stopped with SIGTERM,
    killed if it has not exited after ``stop_seconds``."""
    process = subprocess.Popen(  # noqa: S603  (our own CLI, fixed arguments)
        [sys.executable, "-m", "ragstream.cli", "serve", *arguments], env=env
    )
    try:
        yield f"http://127.0.0.1:{env['RAGSTREAM_PORT']}/graphql"
    finally:
        process.terminate()
        try:
            process.wait(timeout=stop_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
