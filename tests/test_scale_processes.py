"""`ragstream serve` processes on one database are one service (real processes, real kills).

Each test starts its servers as subprocesses on the test's database; the chat provider is the
stub in this process. RAGSTREAM_CHAT_LEASE_SECONDS is short where a test waits for a lease to
expire (the wait is bounded, never measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from tests.chat_stub import ChatScript, ChatStub
from tests.chat_support import (
    CANCEL,
    MESSAGE_STREAM,
    WITHIN,
    eventually,
    joined,
    kinds,
    new_conversation,
    send,
    stream_all,
)
from tests.ports import free_port
from tests.processes import children_of, process_serving, stop_process
from tests.support import PASSWORD, Account, LiveServer
from tests.test_auth import LOGIN
from tests.test_chat_restart import SERVE, _healthy, _row, serve_environment

TOKENS = [f"part{i} " for i in range(300)]
FULL = "".join(TOKENS)


async def _spawn(
    database_url: str, data_dir: Path, stub: ChatStub, *args: str, **env: str
) -> tuple[asyncio.subprocess.Process, int]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *SERVE,
        str(port),
        *args,
        env=serve_environment(database_url, data_dir, stub, **env),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return process, port


@contextlib.asynccontextmanager
async def serving_all(
    database_url: str, data_dirs: list[Path], stub: ChatStub, *args: str, **env: str
) -> AsyncIterator[list[tuple[asyncio.subprocess.Process, LiveServer]]]:
    """`ragstream serve` subprocesses started side by side, all healthy; each stopped by
    SIGTERM at the end if still alive."""
    processes: list[tuple[asyncio.subprocess.Process, int]] = []
    try:
        for data_dir in data_dirs:
            processes.append(await _spawn(database_url, data_dir, stub, *args, **env))
        await asyncio.gather(
            *(eventually(functools.partial(_healthy, port), within=120) for _, port in processes)
        )
        yield [(process, LiveServer.elsewhere(port)) for process, port in processes]
    finally:
        await asyncio.gather(*(stop_process(process, WITHIN) for process, _ in processes))


@contextlib.asynccontextmanager
async def serving(
    database_url: str, data_dir: Path, stub: ChatStub, *args: str, **env: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, LiveServer]]:
    """A `ragstream serve` subprocess, healthy; stopped by SIGTERM at the end if still alive."""
    async with serving_all(database_url, [data_dir], stub, *args, **env) as (started,):
        yield started


@contextlib.asynccontextmanager
async def two_processes(
    database_url: str, tmp_path: Path, stub: ChatStub, **env: str
) -> AsyncIterator[tuple[tuple[asyncio.subprocess.Process, LiveServer], ...]]:
    async with serving_all(database_url, [tmp_path / "a", tmp_path / "b"], stub, **env) as both:
        yield tuple(both)


async def _answering(server: LiveServer, stub: ChatStub) -> tuple[Account, Any]:
    account = await server.register()
    conversation_id = await new_conversation(server, account.access_token)
    answer = await send(server, account.access_token, conversation_id, "Go on")
    await stub.wait_for_tokens(5)
    return account, answer


async def _leases(database_url: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM server_processes WHERE lease_expires_at > now()"
        )
    finally:
        await conn.close()
    return count


async def _status_is(database_url: str, message_id: str, status: str) -> bool:
    return (await _row(database_url, message_id))["status"] == status


async def test_an_answer_streamed_by_one_process_is_resumed_on_another(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    # Long enough (4.5 s) to be followed live from the other process.
    tokens = TOKENS[:150]
    chat_stub.script = ChatScript(tokens=tokens, delay=0.03)
    async with two_processes(database_url, tmp_path, chat_stub) as ((_, a), (_, b)):
        account, answer = await _answering(a, chat_stub)

        events = await stream_all(b, account.access_token, answer["id"], from_offset=5)

        assert kinds(events)[0] == "SourcesRetrieved"
        assert kinds(events)[-1] == "GenerationCompleted"
        assert joined(events, start=5) == "".join(tokens)[5:]  # no gap, no duplicate
        assert kinds(events).count("TokenDelta") > 1  # followed live
        assert (await _row(database_url, answer["id"]))["content"] == "".join(tokens)


async def test_an_answer_generated_by_one_process_is_cancelled_through_another(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with two_processes(database_url, tmp_path, chat_stub) as ((_, a), (_, b)):
        account, answer = await _answering(a, chat_stub)

        result = await b.execute(CANCEL, {"id": answer["id"]}, token=account.access_token)

        cancelled = result.ok()["cancelGeneration"]
        assert cancelled["status"] == "CANCELLED"
        assert cancelled["content"]
        assert FULL.startswith(cancelled["content"])
        assert await _row(database_url, answer["id"]) == {
            "status": "CANCELLED",
            "content": cancelled["content"],
        }
        await eventually(lambda: _abandoned(chat_stub))  # A stopped the provider call


async def _abandoned(stub: ChatStub) -> bool:
    return stub.abandoned == 1


async def test_a_killed_process_answers_become_interrupted_through_another_once_its_lease_expires(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS * 10, delay=0.03)
    lease = {"RAGSTREAM_CHAT_LEASE_SECONDS": "2"}
    async with two_processes(database_url, tmp_path, chat_stub, **lease) as (
        (process_a, a),
        (_, b),
    ):
        account, answer = await _answering(a, chat_stub)
        follower = asyncio.create_task(stream_all(b, account.access_token, answer["id"]))
        await chat_stub.wait_for_tokens(20)

        process_a.send_signal(signal.SIGKILL)
        await process_a.wait()
        assert (await _row(database_url, answer["id"]))["status"] == "STREAMING"

        await eventually(lambda: _status_is(database_url, answer["id"], "INTERRUPTED"))
        events = await follower
        stored = await _row(database_url, answer["id"])
        assert kinds(events)[-1] == "GenerationFailed"
        assert events[-1]["code"] == "INTERRUPTED"
        assert joined(events) == stored["content"]  # everything saved, once, in order
        assert stored["content"]
        assert (FULL * 10).startswith(stored["content"])


async def test_a_process_starting_while_another_generates_interrupts_nothing(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    # The answer holds after 10 tokens until B has started, however slowly B starts.
    chat_stub.script = ChatScript(tokens=TOKENS, hold_after=10)
    async with serving(database_url, tmp_path / "a", chat_stub) as (_, a):
        _, answer = await _answering(a, chat_stub)
        async with serving(database_url, tmp_path / "b", chat_stub):
            # B has started (and swept once): A's answer still runs.
            assert (await _row(database_url, answer["id"]))["status"] == "STREAMING"
            assert await _leases(database_url) == 2
            chat_stub.script.resume.set()
        await eventually(lambda: _status_is(database_url, answer["id"], "COMPLETE"))
        assert (await _row(database_url, answer["id"]))["content"] == FULL


async def test_serve_with_two_workers_runs_two_servers_on_one_port_and_stops_gracefully(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS[:50], delay=0.01)
    async with serving(database_url, tmp_path, chat_stub, "--workers", "2") as (process, server):
        await eventually(lambda: _two_leases(database_url), within=120)
        account, answer = await _answering(server, chat_stub)
        events = await stream_all(server, account.access_token, answer["id"])
        assert joined(events) == "".join(TOKENS[:50])

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(WITHIN * 2):
            code = await process.wait()

    assert code == 0
    assert await _leases(database_url) == 0  # both workers gave theirs up


async def _two_leases(database_url: str) -> bool:
    return await _leases(database_url) == 2


async def _generator_pid(database_url: str, message_id: str) -> int:
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        pid: int = await conn.fetchval(
            "SELECT p.pid FROM messages m JOIN server_processes p ON p.id = m.generator_id"
            " WHERE m.id = $1",
            uuid.UUID(message_id),
        )
    finally:
        await conn.close()
    return pid


async def test_a_killed_worker_of_serve_workers_2_has_its_answer_interrupted_once_its_lease_ends(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS * 10, delay=0.03)
    lease = {"RAGSTREAM_CHAT_LEASE_SECONDS": "2"}
    async with serving(database_url, tmp_path, chat_stub, "--workers", "2", **lease) as (
        process,
        server,
    ):
        await eventually(lambda: _two_leases(database_url), within=120)
        account, answer = await _answering(server, chat_stub)
        await chat_stub.wait_for_tokens(20)
        owner = await _generator_pid(database_url, answer["id"])
        assert owner != process.pid  # a worker, not the supervisor

        os.kill(owner, signal.SIGKILL)
        await eventually(lambda: _status_is(database_url, answer["id"], "INTERRUPTED"))

        # Whichever worker takes the connection, the answer ends as stored.
        events = await stream_all(server, account.access_token, answer["id"])
        stored = await _row(database_url, answer["id"])
        assert kinds(events)[-1] == "GenerationFailed"
        assert events[-1]["code"] == "INTERRUPTED"
        assert stored["content"]
        assert joined(events) == stored["content"]
        assert process.returncode is None  # the server itself still runs


@contextlib.asynccontextmanager
async def websocket_on_worker(
    server: LiveServer, token: str | None, supervisor: int, wanted: Callable[[int], bool]
) -> AsyncIterator[tuple[Any, int]]:
    """A websocket session of ``server`` (`serve --workers N`, supervised by ``supervisor``)
    that a worker ``wanted`` took, and that worker's process id: the kernel hands each
    connection to one of the workers, so connect until a wanted one has it."""
    # Idle workers race to accept, and one may win most races: connecting costs little, so
    # try many times.
    for _ in range(300):
        async with server.websocket(token) as session:
            client_port = session.transport.adapter.websocket.local_address[1]
            worker = process_serving(server.port, client_port, children_of(supervisor))
            assert worker is not None, "no worker holds the connection"
            if wanted(worker):
                yield session, worker
                return
    raise AssertionError("no connection went to a wanted worker")


async def test_an_answer_generated_by_one_worker_is_resumed_and_cancelled_through_the_other(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, delay=0.03)
    async with serving(database_url, tmp_path, chat_stub, "--workers", "2") as (process, server):
        await eventually(lambda: _two_leases(database_url), within=120)
        account, answer = await _answering(server, chat_stub)
        owner = await _generator_pid(database_url, answer["id"])
        token = account.access_token

        async with websocket_on_worker(server, token, process.pid, lambda w: w != owner) as (
            other,
            _,
        ):
            events: list[dict[str, Any]] = []

            async def follow() -> None:
                request = GraphQLRequest(
                    MESSAGE_STREAM, variable_values={"id": answer["id"], "from": 5}
                )
                async for data in other.subscribe(request):
                    events.append(next(iter(data.values())))

            async with asyncio.timeout(WITHIN), asyncio.TaskGroup() as tasks:
                tasks.create_task(follow())
                await eventually(lambda: _followed(events, 3))  # live deltas from the owner
                result = await other.execute(
                    GraphQLRequest(CANCEL, variable_values={"id": answer["id"]})
                )

        cancelled = result["cancelGeneration"]
        assert cancelled["status"] == "CANCELLED"
        assert FULL.startswith(cancelled["content"])
        assert cancelled["content"] != FULL
        assert await _row(database_url, answer["id"]) == {
            "status": "CANCELLED",
            "content": cancelled["content"],
        }
        assert kinds(events)[0] == "SourcesRetrieved"
        assert kinds(events)[-1] == "GenerationCompleted"
        assert events[-1]["message"]["status"] == "CANCELLED"
        assert joined(events, start=5) == cancelled["content"][5:]  # no gap, no duplicate
        await eventually(lambda: _abandoned(chat_stub))  # the owner stopped the provider call


async def _followed(events: list[dict[str, Any]], deltas: int) -> bool:
    return kinds(events).count("TokenDelta") >= deltas


async def _login_error(session: Any, email: str, password: str) -> dict[str, Any]:
    """The error of a `login` sent over a websocket session (it must fail)."""
    request = GraphQLRequest(LOGIN, variable_values={"email": email, "password": password})
    with pytest.raises(TransportQueryError) as caught:
        await session.execute(request)
    (error,) = caught.value.errors or []
    return dict(error)


async def test_login_limits_hold_across_the_workers_of_serve_workers_2(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    limit = {"RAGSTREAM_LOGIN_ATTEMPTS_PER_MINUTE": "2"}
    async with serving(database_url, tmp_path, chat_stub, "--workers", "2", **limit) as (
        process,
        server,
    ):
        await eventually(lambda: _two_leases(database_url), within=120)
        account = await server.register()
        async with (
            websocket_on_worker(server, None, process.pid, lambda _: True) as (first, worker),
            websocket_on_worker(server, None, process.pid, lambda w: w != worker) as (second, _),
        ):
            for session in (first, second):
                wrong = await _login_error(session, account.email, "wrong password!")
                assert wrong["extensions"]["code"] == "UNAUTHENTICATED"

            # Two attempts, one on each worker: even the right password is refused, on either.
            for session in (first, second):
                refused = await _login_error(session, account.email, PASSWORD)
                assert refused["extensions"]["code"] == "RATE_LIMITED"
                assert refused["extensions"]["reason"] == "TOO_MANY_ATTEMPTS"
                assert refused["extensions"]["limit"] == 2
