"""Fixtures: one embedded PostgreSQL per test run, shared by the xdist workers; a migrated template
database per worker; a fresh database per test cloned from it; the app running over it."""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ragstream.db.embedded import EmbeddedDatabase, start_embedded
from ragstream.db.migrate import upgrade_to_head
from ragstream.observability import logs
from ragstream.settings import Settings
from tests.chat_stub import ChatStub
from tests.support import LiveServer, running_server

pytest_plugins = ("tests.hermetic", "pytester")

TEST_JWT_SECRET = "test-secret-" + "x" * 40
# The cheapest argon2id parameters (still the real hasher): a hash takes well under a millisecond
# instead of tens, and the suite hashes thousands of passwords. Production defaults are in
# settings.py. Not the lowest memory allowed: a test rehashes from those.
TEST_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 64, "argon2_parallelism": 1}


@pytest.fixture(autouse=True)
def request_lines_at_once() -> Iterator[None]:
    """A test that runs `serve` in this process sets up the server's logging, which hands request
    lines to logging in batches; the tests after it see each line at once, as they expect."""
    yield
    logs.flush_request_lines()
    logs._request_lines = None


def argon2_environment() -> dict[str, str]:
    """TEST_ARGON2 as the environment of a `ragstream` command or subprocess."""
    return {f"RAGSTREAM_{name.upper()}": str(value) for name, value in TEST_ARGON2.items()}


PG_ROOT_KEY = "ragstream_pg_root"
PG_ROOT = pytest.StashKey[Path]()


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: two workers per core, at most 8. The suite waits on servers, processes and
    sockets more than it computes (a run on 2 cores used about one core's CPU time), so a
    second worker per core fills the waits; measured on 2 cores, 236-261 s against 252-313 s
    with one per core."""
    return max(2, min(2 * (os.cpu_count() or 1), 8))


def pytest_configure(config: pytest.Config) -> None:
    # The controller (or a run without workers) owns the server's folder: outside pytest's
    # basetemp, which a concurrent run may prune under a live server. Workers get its path.
    if not hasattr(config, "workerinput"):
        config.stash[PG_ROOT] = Path(tempfile.mkdtemp(prefix="ragstream-test-pg-"))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    node.workerinput[PG_ROOT_KEY] = str(node.config.stash[PG_ROOT])


def pytest_unconfigure(config: pytest.Config) -> None:
    # Runs after every worker has exited, and the last one stopped the server.
    if PG_ROOT in config.stash:
        shutil.rmtree(config.stash[PG_ROOT], ignore_errors=True)


def worker_name(config: pytest.Config) -> str:
    workerinput: dict[str, str] | None = getattr(config, "workerinput", None)
    return workerinput["workerid"] if workerinput else "main"


@pytest.fixture(scope="session")
def template(request: pytest.FixtureRequest) -> str:
    """This worker's migrated template: workers clone and never touch each other's."""
    return f"ragstream_template_{worker_name(request.config)}"


@pytest.fixture(scope="session")
def embedded_pg(request: pytest.FixtureRequest, template: str) -> Iterator[EmbeddedDatabase]:
    workerinput: dict[str, str] | None = getattr(request.config, "workerinput", None)
    root = Path(workerinput[PG_ROOT_KEY]) if workerinput else request.config.stash[PG_ROOT]
    # The first worker starts the server, the others join it; the last one out stops it.
    # Workers take turns: two creating the cluster folder at once would collide.
    with (root / ".start.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            database = start_embedded(root)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)

    async def make_template() -> None:
        conn = await asyncpg.connect(database.libpq_uri("postgres"))
        try:
            # A throwaway cluster: nothing needs to survive a crash, so no test waits for a
            # disk flush (commits, database clones). Queries behave exactly the same.
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                await conn.execute(f"ALTER SYSTEM SET {setting} = off")
            await conn.execute("SELECT pg_reload_conf()")
            await conn.execute(f"DROP DATABASE IF EXISTS {template}")
            await conn.execute(f"CREATE DATABASE {template}")
        finally:
            await conn.close()

    asyncio.run(make_template())
    upgrade_to_head(database.url(template))
    yield database
    database.stop()


@pytest.fixture
async def database_url(embedded_pg: EmbeddedDatabase, template: str) -> AsyncIterator[str]:
    """A private database for one test, cloned from the migrated template (fast, isolated)."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(embedded_pg.libpq_uri("postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE {template}')
    finally:
        await conn.close()
    yield embedded_pg.url(name)
    conn = await asyncpg.connect(embedded_pg.libpq_uri("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_settings(database_url: str, data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "jwt_secret": TEST_JWT_SECRET,
        **TEST_ARGON2,
        "login_attempts_per_minute": 1_000,
        "login_attempts_per_minute_per_client": 1_000,
        "registrations_per_hour": 100_000,
        "registrations_per_hour_per_client": 100_000,
        "introspection": True,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app in-process: HTTP through httpx's ASGI transport, websockets through uvicorn."""
    async with running_server(settings) as live:
        yield live


@pytest.fixture
async def live_server(settings: Settings) -> AsyncIterator[LiveServer]:
    """The app behind uvicorn on a loopback port: every request crosses a real socket."""
    async with running_server(settings, listen=True) as live:
        yield live


@pytest.fixture
async def chat_stub() -> AsyncIterator[ChatStub]:
    """A local OpenAI-compatible server (embeddings and streamed chat completions)."""
    stub = ChatStub()
    async with stub:
        yield stub
