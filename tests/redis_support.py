"""A real `redis-server` (Debian's package; .ci/run installs it) on a free loopback port.

Started and stopped by the test that needs it, never assumed running; `kill` and `start` let a
test take it away mid-answer and bring it back on the same port (empty: no persistence).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as redis
from redis.exceptions import RedisError

from tests.chat_support import WITHIN
from tests.ports import free_port


class RedisServer:
    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        assert executable is not None, "redis-server is needed: apt-get install redis-server"
        self._executable = executable
        self._directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self._directory.mkdir, parents=True, exist_ok=True)
        self._process = await asyncio.create_subprocess_exec(
            self._executable,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._directory),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with asyncio.timeout(WITHIN):
            while not await self._answers():
                assert self._process.returncode is None, "redis-server exited at start"
                await asyncio.sleep(0.02)

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(signal.SIGKILL)
            await self._process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)

    async def _answers(self) -> bool:
        client = self.client()
        try:
            return bool(await client.ping())
        except (RedisError, OSError):
            return False
        finally:
            await client.aclose()


@contextlib.asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(directory)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
