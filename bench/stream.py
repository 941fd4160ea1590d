"""Streaming throughput: N concurrent `chat` subscriptions against a stub emitting T tokens/s.

Usage: python -m bench.stream [--clients 10 100 1000] [--rate 20] [--tokens 200]

Three processes on loopback: the OpenAI-compatible stub (tests/chat_stub.py, every token is its
emission time), the ragstream server (real app, openai provider, embedded PostgreSQL), and this
client, which opens one websocket per subscription (graphql-transport-ws). Printed per N:

- delivered tok/s: provider tokens that reached the clients, per second of the run;
- server CPU µs/token: CPU time of the server process (user + system, from /proc) over the run,
  including sends, retrieval and persistence, divided by delivered tokens;
- tokens/event: provider tokens per TokenDelta (the coalescing window at work);
- p50/p99 delay: receive time minus the stub's emission time of each token;
- vs proxy: server CPU per token relative to the proxy floor of the same N.

Each N is run against ragstream and the two floors of `bench/stream_floor.py` (same stub, same
client), one after the other, so all three see the same machine (`--servers` picks among them,
`--repeat` runs them in turn several times). `--against DIR` adds ragstream as another checkout
has it (e.g. `git archive main | tar -x -C DIR`), on the same database and stub: two versions
compared in one run, which a busy machine cannot do across runs; `--also-window-ms 100` adds
this ragstream with another coalescing window. At the end: server memory
per idle connection (connection_init acknowledged, no operation), from the RSS of the server
before and after opening them.

Everything is bounded: each round has a deadline and reports what it got.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from rich.console import Console
from rich.table import Table

from bench.common import bench_settings, embedded_database, graphql, percentile, register

ROOT = Path(__file__).resolve().parents[1]
CHAT = """subscription($input: SendMessageInput!) { chat(input: $input) { __typename
  ... on TokenDelta { offset delta }
  ... on GenerationCompleted { message { status } }
  ... on GenerationFailed { code } } }"""
CREATE = 'mutation { createConversation(input: {title: "bench"}) { id } }'
STAMP_WIDTH = 16
STAMP_MODULO = 10**15


@dataclass
class Round:
    clients: int
    server: str = "ragstream"
    tokens: int = 0
    events: int = 0
    completed: int = 0
    failed: int = 0
    delays: list[float] = field(default_factory=list)
    first_token: float = float("inf")
    last_token: float = 0.0
    server_cpu: float = 0.0
    timed_out: bool = False
    problems: dict[str, int] = field(default_factory=dict)

    def problem(self, what: str) -> None:
        self.failed += 1
        self.problems[what] = self.problems.get(what, 0) + 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def process(
    *args: str, env: dict[str, str] | None = None, output: bool = False, root: Path = ROOT
) -> AsyncIterator[Any]:
    """A child process in the checkout ``root`` (this one by default), with its ragstream."""
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root / "src"), **(env or {})},
        stdout=asyncio.subprocess.PIPE if output else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def wait_healthy(url: str) -> None:
    async with asyncio.timeout(120), httpx.AsyncClient(timeout=2) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)


def delays_of(delta: str, received: float) -> list[float]:
    now = int(received * 1_000_000) % STAMP_MODULO
    out = []
    for i in range(0, len(delta) - STAMP_WIDTH + 1, STAMP_WIDTH):
        token = delta[i : i + STAMP_WIDTH - 1]
        if token.isdigit():
            out.append(((now - int(token)) % STAMP_MODULO) / 1_000_000)
    return out


async def subscriber(
    ws_url: str, token: str, conversation_id: str, result: Round, gate: asyncio.Semaphore
) -> None:
    async with gate:
        socket = await websockets.connect(
            ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")], max_size=None
        )
    async with socket:
        await socket.send(
            json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
        )
        await socket.recv()  # connection_ack
        variables = {"input": {"conversationId": conversation_id, "content": "Stream please"}}
        await socket.send(
            json.dumps(
                {
                    "id": "1",
                    "type": "subscribe",
                    "payload": {"query": CHAT, "variables": variables},
                }
            )
        )
        async for raw in socket:
            received = time.time()
            message = json.loads(raw)
            if message["type"] != "next":
                detail = ""
                if message["type"] == "error" and message.get("payload"):
                    detail = f": {message['payload'][0].get('message', '')}"
                result.problem(f"ended by {message['type']}{detail}")
                break
            payload = message["payload"]
            if payload.get("errors"):
                error = payload["errors"][0]
                result.problem(error.get("extensions", {}).get("code") or error.get("message"))
                break
            event = payload["data"]["chat"]
            kind = event["__typename"]
            if kind == "TokenDelta":
                delays = delays_of(event["delta"], received)
                result.tokens += len(delays)
                result.events += 1
                result.delays.extend(delays)
                result.first_token = min(result.first_token, received)
                result.last_token = max(result.last_token, received)
            elif kind == "GenerationCompleted":
                result.completed += 1
                break
            elif kind == "GenerationFailed":
                result.problem(event["code"])
                break
        else:
            result.problem("closed early")


async def settle(pids: list[int], *, most: float = 90) -> None:
    """Waits (at most ``most`` seconds) until the servers are done with earlier rounds: a round
    that reached its deadline leaves ragstream generating the answers its clients left, which
    would take CPU from the next contestant."""
    loop = asyncio.get_running_loop()
    until = loop.time() + most
    while loop.time() < until:
        before = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(1)
        if sum(cpu_seconds(pid) for pid in pids) - before < 0.05 * len(pids):
            return


async def run_round(
    server: str,
    base: str,
    server_pid: int,
    clients: int,
    users: list[tuple[str, str]],
    deadline: float,
) -> Round:
    result = Round(clients, server)
    graphql_url = f"{base}/graphql"
    ws_url = graphql_url.replace("http://", "ws://")
    conversations = [("floor", "floor")] * clients
    if server.startswith("ragstream"):
        conversations = []
        async with httpx.AsyncClient(timeout=120) as client:
            for i in range(clients):
                _, token = users[i % len(users)]
                data = await graphql(client, graphql_url, CREATE, token=token)
                conversations.append((token, data["createConversation"]["id"]))
    gate = asyncio.Semaphore(50)  # how many sockets open at the same moment
    cpu_before = cpu_seconds(server_pid)
    tasks = [
        asyncio.create_task(subscriber(ws_url, token, conversation_id, result, gate))
        for token, conversation_id in conversations
    ]
    done, pending = await asyncio.wait(tasks, timeout=deadline)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        error = task.exception()
        if isinstance(error, websockets.ConnectionClosed):
            code = error.rcvd.code if error.rcvd else "no close frame"
            result.problem(f"websocket closed ({code})")
        elif error is not None:
            result.problem(type(error).__name__)
    result.timed_out = bool(pending)
    result.server_cpu = cpu_seconds(server_pid) - cpu_before
    return result


@contextlib.asynccontextmanager
async def stub_server(tokens: int, rate: float) -> AsyncIterator[str]:
    """The OpenAI-compatible stub as its own process, stamping `tokens` tokens at `rate` per
    second; yields its base URL."""
    async with process(
        sys.executable,
        "-m",
        "tests.chat_stub",
        "--tokens",
        str(tokens),
        "--rate",
        str(rate),
        output=True,
    ) as stub:
        assert stub.stdout is not None
        stub_port = int((await stub.stdout.readline()).decode())
        yield f"http://127.0.0.1:{stub_port}/v1"


def server_env(
    database_url: str,
    data_dir: Path,
    stub_url: str,
    port: int,
    window_ms: int,
    profile: str | None = None,
    send_timeout: float | None = None,
) -> dict[str, str]:
    """The environment of `serve` (`python -m bench.stream --serve`)."""
    env = {
        "BENCH_DATABASE_URL": database_url,
        "BENCH_DATA_DIR": str(data_dir),
        "BENCH_STUB_URL": stub_url,
        "BENCH_PORT": str(port),
        "BENCH_WINDOW_MS": str(window_ms),
        "BENCH_PROFILE": profile or "",
    }
    if send_timeout is not None:
        env["BENCH_SEND_TIMEOUT"] = str(send_timeout)
    return env


async def bench(args: argparse.Namespace) -> list[Round]:
    rounds: list[Round] = []
    async with (
        stub_server(args.tokens, args.rate) as stub_url,
        embedded_database() as (database, name, data_dir),
    ):
        port = args.port or free_port()
        env = server_env(database.url(name), data_dir, stub_url, port, args.window_ms, args.profile)
        floor_env = {
            "BENCH_STUB_URL": env["BENCH_STUB_URL"],
            "BENCH_TOKENS": str(args.tokens),
            "BENCH_RATE": str(args.rate),
        }
        wanted = set(args.servers)
        base = f"http://127.0.0.1:{port}"
        async with contextlib.AsyncExitStack() as stack:
            contestants: list[tuple[str, str, int]] = []
            # Always started: accounts are registered through it.
            server = await stack.enter_async_context(
                process(sys.executable, "-m", "bench.stream", "--serve", env=env)
            )
            if "ragstream" in wanted:
                contestants.append(("ragstream", base, server.pid))

            async def another(label: str, root: Path = ROOT, **extra: str) -> None:
                """One more ragstream server on the same database and stub."""
                other_port = free_port()
                other = await stack.enter_async_context(
                    process(
                        sys.executable,
                        "-m",
                        "bench.stream",
                        "--serve",
                        env={**env, "BENCH_PORT": str(other_port), **extra},
                        root=root,
                    )
                )
                contestants.append((label, f"http://127.0.0.1:{other_port}", other.pid))

            for window_ms in args.also_window_ms:
                # The same code with another coalescing window.
                await another(f"ragstream {window_ms} ms", BENCH_WINDOW_MS=str(window_ms))
            for other_root in args.against:
                # Another checkout's server (e.g. `git archive main` unpacked): versions of
                # ragstream side by side in one run.
                await another(f"ragstream {other_root.name}", root=other_root)
            for mode in ("proxy", "timer"):
                if mode not in wanted:
                    continue
                floor_port = free_port()
                floor = await stack.enter_async_context(
                    process(
                        sys.executable,
                        "-m",
                        "bench.stream",
                        "--serve-floor",
                        env={**floor_env, "BENCH_FLOOR_MODE": mode, "BENCH_PORT": str(floor_port)},
                    )
                )
                contestants.append((f"{mode} floor", f"http://127.0.0.1:{floor_port}", floor.pid))
            for url in {base, *(url for _, url, _ in contestants)}:
                await wait_healthy(f"{url}/healthz")
            # Three answers at once per user, the default cap: a user's sends are
            # serialised (exact quotas), so fewer users would measure that queue instead.
            accounts = -(-max(args.clients) // 3)
            async with httpx.AsyncClient(timeout=120) as client:
                users: list[tuple[str, str]] = []
                while len(users) < accounts:
                    batch = min(2, accounts - len(users))  # password hashes take turns
                    users += await asyncio.gather(
                        *(register(client, f"{base}/graphql") for _ in range(batch))
                    )
            deadline = args.tokens / args.rate * 4 + 60
            for clients in args.clients:
                for _ in range(args.repeat):
                    for name, url, pid in contestants:
                        await settle([pid for _, _, pid in contestants])
                        rounds.append(await run_round(name, url, pid, clients, users, deadline))
                        print_rounds(rounds, args)
            for name, url, pid in contestants if args.idle > 0 else ():
                per_socket = await idle_memory(url, pid, users, args.idle)
                Console().print(
                    f"{name}: {per_socket / 1024:,.1f} KiB of server RSS per idle connection "
                    f"({args.idle} connections)"
                )
    return rounds


def rss(pid: int) -> int:
    """Resident memory of a process in bytes (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def idle_memory(base: str, pid: int, users: list[tuple[str, str]], count: int) -> float:
    """Server RSS per open, acknowledged, idle connection."""
    ws_url = f"{base.replace('http://', 'ws://')}/graphql"
    await asyncio.sleep(1)
    before = rss(pid)
    sockets = []
    try:
        for i in range(count):
            socket = await websockets.connect(
                ws_url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
            )
            sockets.append(socket)
            _, token = users[i % len(users)]
            init = {"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}
            await socket.send(json.dumps(init))
            await socket.recv()
        await asyncio.sleep(1)
        return (rss(pid) - before) / count
    finally:
        await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)


def serve() -> None:
    """The server process of the benchmark (configured through BENCH_* variables)."""
    import logging

    import uvicorn

    from ragstream.app import create_app
    from ragstream.cli import freeze_startup_heap
    from ragstream.ws_compression import WebSocketProtocol

    settings = bench_settings(
        os.environ["BENCH_DATABASE_URL"],
        Path(os.environ["BENCH_DATA_DIR"]),
        chat_provider="openai",
        OPENAI_API_KEY="sk-bench",
        OPENAI_BASE_URL=os.environ["BENCH_STUB_URL"],
        chat_max_concurrent_generations=1_000_000,
        daily_message_limit=1_000_000_000,
        chat_coalesce_window_ms=int(os.environ["BENCH_WINDOW_MS"]),
        db_pool_size=20,
        db_max_overflow=20,
        **(
            {"ws_send_timeout_seconds": float(os.environ["BENCH_SEND_TIMEOUT"])}
            if os.environ.get("BENCH_SEND_TIMEOUT")
            else {}
        ),
    )
    logging.basicConfig(level=logging.WARNING)
    profile = os.environ.get("BENCH_PROFILE")
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        # uvicorn re-raises SIGTERM after its graceful shutdown; a no-op handler lets the
        # profile be written afterwards.
        signal.signal(signal.SIGTERM, lambda *_: None)
        profiler.enable()

    class Server(uvicorn.Server):
        """As `ragstream serve` runs it: the start-up heap frozen once the server listens."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                freeze_startup_heap()

    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        log_level="warning",
        lifespan="on",
        # As `ragstream serve` runs it (server_options): small messages uncompressed.
        ws=WebSocketProtocol,
    )
    try:
        Server(config).run()
    finally:
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)


def cpu_per_token(r: Round) -> float | None:
    return r.server_cpu / r.tokens * 1e6 if r.tokens else None


def serve_floor() -> None:
    """A floor's server process (bench/stream_floor.py, configured through BENCH_* variables)."""
    import uvicorn

    from bench.stream_floor import build_app

    uvicorn.run(
        build_app(), host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="warning"
    )


def print_rounds(rounds: list[Round], args: argparse.Namespace) -> None:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    table = Table(
        title=f"chat streaming: stub at {args.rate:g} tokens/s per answer, {args.tokens} tokens, "
        f"coalescing window {args.window_ms} ms; load average {load}"
    )
    proxies = {r.clients: cpu_per_token(r) for r in rounds if r.server == "proxy floor"}
    for column in (
        "clients",
        "server",
        "completed",
        "failed",
        "tokens",
        "delivered tok/s",
        "server CPU µs/token",
        "tokens/event",
        "p50 delay ms",
        "p99 delay ms",
        "vs proxy",
    ):
        table.add_column(column, justify="right")
    for r in rounds:
        span = max(r.last_token - r.first_token, 1e-9)
        mine, proxy = cpu_per_token(r), proxies.get(r.clients)
        table.add_row(
            str(r.clients),
            r.server,
            str(r.completed),
            f"{r.failed}{' (deadline)' if r.timed_out else ''}",
            str(r.tokens),
            f"{r.tokens / span:,.0f}" if r.tokens else "-",
            f"{r.server_cpu / r.tokens * 1e6:,.0f}" if r.tokens else "-",
            f"{r.tokens / r.events:.1f}" if r.events else "-",
            f"{percentile(r.delays, 50) * 1000:.1f}" if r.delays else "-",
            f"{percentile(r.delays, 99) * 1000:.1f}" if r.delays else "-",
            f"{mine / proxy:.2f}x" if mine and proxy else "-",
        )
    console = Console(width=160)
    console.print(table)
    for r in rounds:
        if r.problems:
            console.print(f"{r.clients} clients, {r.server}, failures: {r.problems}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rate", type=float, default=20.0, help="tokens/s of each answer")
    parser.add_argument("--tokens", type=int, default=200, help="tokens per answer")
    parser.add_argument("--window-ms", type=int, default=30, help="coalescing window")
    parser.add_argument(
        "--also-window-ms",
        type=int,
        nargs="*",
        default=[],
        help="also run ragstream with each of these coalescing windows (ms), same code",
    )
    parser.add_argument("--port", type=int, default=0, help="server port (0: any free one)")
    parser.add_argument("--profile", help="write a cProfile of the server process to this file")
    parser.add_argument(
        "--idle",
        type=int,
        default=200,
        help="idle connections for the memory figure (0: no memory figure)",
    )
    parser.add_argument(
        "--servers",
        nargs="+",
        choices=["ragstream", "proxy", "timer"],
        default=["ragstream", "proxy", "timer"],
        help="contestants (ragstream, the proxy floor, the timer floor)",
    )
    parser.add_argument(
        "--against",
        type=lambda path: Path(path).resolve(),
        action="append",
        default=[],
        help="also run ragstream from this checkout (a directory holding src/ and bench/), "
        "named by its directory; may be given more than once",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every contestant per N, interleaved"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if args.serve_floor:
        serve_floor()
        return
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
