"""`serve --workers N` says what `serve` says: one banner, one line per request."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx

from tests.chat_stub import ChatStub
from tests.chat_support import WITHIN, eventually
from tests.ports import free_port
from tests.test_chat_restart import SERVE, _healthy, serve_environment


async def test_workers_log_one_banner_and_one_line_per_request(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *SERVE,
        str(port),
        "--workers",
        "2",
        env=serve_environment(database_url, tmp_path, chat_stub, RAGSTREAM_LOG_FORMAT="text"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = asyncio.create_task(process.stdout.read())  # read all along: never a full pipe
    try:
        await eventually(lambda: _healthy(port), within=120)
        async with httpx.AsyncClient(timeout=60) as client:
            answer = await client.post(
                f"http://127.0.0.1:{port}/graphql", json={"query": "{ __typename }"}
            )
        assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WITHIN * 2):
            assert await process.wait() == 0
        log = (await output).decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        output.cancel()

    assert log.count("ragstream is serving GraphQL at") == 1, log
    for part in ("GraphiQL", "data dir", "providers", "2 server processes"):
        assert part in log, log
    assert log.count("POST /graphql") == 1, log  # ragstream's line, not uvicorn's as well
    assert "uvicorn.access" not in log, log
