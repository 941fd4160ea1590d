"""Nothing stays STREAMING across a shutdown or a crash: INTERRUPTED, with the text kept.

`ragstream serve` stopped by SIGTERM or SIGINT shuts down gracefully and exits with status 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    WITHIN,
    chat_server,
    eventually,
    joined,
    kinds,
    new_conversation,
    send,
    stored_message,
    stream_all,
)
from tests.conftest import TEST_JWT_SECRET, argon2_environment
from tests.ports import free_port
from tests.support import LOOPBACK_TLS, LiveServer

TOKENS = [f"piece{i} " for i in range(400)]
FULL = "".join(TOKENS)


async def test_shutdown_interrupts_answers_still_running_after_the_grace_period(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.02)
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_shutdown_grace_seconds=0
    ) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = await send(server, account.access_token, conversation_id, "Go on")
        received = "".join(TOKENS[:5])

        async def taken_in() -> bool:
            # The partial text the server writes as it streams (the flusher's).
            stored = await stored_message(server, answer["id"])
            return len(stored["content"] or "") >= len(received)

        await eventually(taken_in)
    # The server has stopped: the answer was stored with everything streamed until then.
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        stored = await stored_message(server, answer["id"])
        assert stored["status"] == "INTERRUPTED"
        assert stored["error_code"] == "INTERRUPTED"
        assert len(stored["content"]) >= len(received)
        assert FULL.startswith(stored["content"])

        events = await stream_all(server, account.access_token, answer["id"])

        assert kinds(events) == ["SourcesRetrieved", "TokenDelta", "GenerationFailed"]
        assert joined(events) == stored["content"]
        assert events[-1]["code"] == "INTERRUPTED"


async def test_shutdown_lets_answers_finish_within_the_grace_period(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS[:20], delay=0.01)
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_shutdown_grace_seconds=WITHIN
    ) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)
        answer = await send(server, account.access_token, conversation_id, "Go on")
        await chat_stub.wait_for_tokens(2)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        stored = await stored_message(server, answer["id"])
        assert stored["status"] == "COMPLETE"
        assert stored["content"] == "".join(TOKENS[:20])


def serve_environment(
    database_url: str, data_dir: Path, stub: ChatStub, **extra: str
) -> dict[str, str]:
    """The environment of a `ragstream serve` subprocess on the test database and the stub."""
    return {
        **os.environ,
        "RAGSTREAM_DATABASE_URL": database_url,
        "RAGSTREAM_DATA_DIR": str(data_dir),
        "RAGSTREAM_JWT_SECRET": TEST_JWT_SECRET,
        **argon2_environment(),
        "RAGSTREAM_CHAT_PROVIDER": "openai",
        "RAGSTREAM_EMBEDDING_PROVIDER": "hashing",
        "RAGSTREAM_CHAT_FLUSH_INTERVAL_MS": "20",
        "OPENAI_API_KEY": "sk-test",
        "OPENAI_BASE_URL": stub.base_url,
        **extra,
    }


SERVE = (sys.executable, "-m", "ragstream.cli", "serve", "--port")


async def test_a_crash_mid_answer_leaves_it_interrupted_with_the_text_flushed_so_far(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.01)
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *SERVE,
        str(port),
        env=serve_environment(
            database_url, tmp_path / "crashing", chat_stub, RAGSTREAM_CHAT_LEASE_SECONDS="1"
        ),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        crashing = LiveServer(Starlette())
        crashing.port = port
        await eventually(lambda: _healthy(port), within=120)
        account = await crashing.register()
        conversation_id = await new_conversation(crashing, account.access_token)
        answer = await send(crashing, account.access_token, conversation_id, "Go on")
        await eventually(lambda: _stored_some(database_url, answer["id"]))

        process.send_signal(signal.SIGKILL)
        async with asyncio.timeout(WITHIN):
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    left = await _row(database_url, answer["id"])
    assert left["status"] == "STREAMING"  # nothing ran after the kill

    # The next server interrupts it once the killed one's lease has expired.
    async with chat_server(database_url, tmp_path, chat_stub, chat_lease_seconds=1) as server:
        await eventually(lambda: _interrupted(server, answer["id"]))
        stored = await stored_message(server, answer["id"])
        assert stored["status"] == "INTERRUPTED"
        assert stored["content"] == left["content"]
        assert stored["content"]
        assert FULL.startswith(stored["content"])


@pytest.mark.parametrize(
    ("stop_signal", "grace", "tokens", "ending"),
    [
        # Past the grace period the running answer is stored as INTERRUPTED by the shutdown.
        (signal.SIGTERM, "0", TOKENS, "INTERRUPTED"),
        # Within it the answer is allowed to finish.
        (signal.SIGINT, str(WITHIN), TOKENS[:100], "COMPLETE"),
    ],
    ids=["SIGTERM", "SIGINT"],
)
async def test_serve_stopped_by_a_signal_shuts_down_gracefully_and_exits_0(
    database_url: str,
    tmp_path: Path,
    chat_stub: ChatStub,
    stop_signal: signal.Signals,
    grace: str,
    tokens: list[str],
    ending: str,
) -> None:
    chat_stub.script = ChatScript(tokens=tokens, delay=0.02)
    port = free_port()
    env = serve_environment(
        database_url, tmp_path / "stopping", chat_stub, RAGSTREAM_CHAT_SHUTDOWN_GRACE_SECONDS=grace
    )
    process = await asyncio.create_subprocess_exec(
        *SERVE,
        str(port),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    # Read all along, so a full pipe can never block the server.
    output = asyncio.create_task(process.stdout.read())
    try:
        serving = LiveServer(Starlette())
        serving.port = port
        await eventually(lambda: _healthy(port), within=120)
        account = await serving.register()
        conversation_id = await new_conversation(serving, account.access_token)
        answer = await send(serving, account.access_token, conversation_id, "Go on")
        await eventually(lambda: _stored_some(database_url, answer["id"]))

        process.send_signal(stop_signal)
        async with asyncio.timeout(WITHIN * 2):
            code = await process.wait()
            log = (await output).decode(errors="replace")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        output.cancel()

    assert code == 0, log
    assert "ragstream stopped" in log, log  # the lifespan's shutdown ran to its end
    assert "Traceback" not in log, log
    # Stored by the shutdown itself: no later start-up has recovered anything.
    stored = await _row(database_url, answer["id"])
    assert stored["status"] == ending
    assert stored["content"]
    assert "".join(tokens).startswith(stored["content"])


async def test_serve_that_cannot_start_exits_non_zero(tmp_path: Path, chat_stub: ChatStub) -> None:
    unreachable = f"postgresql+asyncpg://ragstream:secret@127.0.0.1:{free_port()}/ragstream"
    process = await asyncio.create_subprocess_exec(
        *SERVE,
        str(free_port()),
        env=serve_environment(unreachable, tmp_path / "failing", chat_stub),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(120):
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert code == 3


async def _healthy(port: int) -> bool:
    # Polled every 10 ms while a server starts: a client of its own TLS context would take
    # the CPU that start-up needs.
    try:
        async with httpx.AsyncClient(timeout=1, verify=LOOPBACK_TLS) as client:
            response = await client.get(f"http://127.0.0.1:{port}/healthz")
    except httpx.HTTPError:
        return False
    return response.status_code == 200


async def _row(database_url: str, message_id: str) -> dict[str, str]:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT status, content FROM messages WHERE id = $1::uuid", message_id
        )
    finally:
        await conn.close()
    assert row is not None
    return {"status": row["status"], "content": row["content"]}


async def _interrupted(server: LiveServer, message_id: str) -> bool:
    status: str = (await stored_message(server, message_id))["status"]
    return status == "INTERRUPTED"


async def _stored_some(database_url: str, message_id: str) -> bool:
    return bool((await _row(database_url, message_id))["content"])
