"""What a chat subscriber that stops reading costs the server, and that the answer goes on.

Usage: python -m bench.stalled [--clients 20] [--rate 1000] [--tokens 40000]

Processes on loopback, as in `bench/stream.py`: the OpenAI-compatible stub (a long, fast answer
so unread data piles up quickly), a ragstream server (`bench.stream --serve`, the default send
timeout unless `--send-timeout` is given) and this client. Two scenarios, each on a fresh server
and database: N clients subscribe to `chat` (one answer each, on websockets with a small receive
buffer) and read every answer to its end; then N clients read the first event and stop reading:
each socket's receive window closes, the server's kernel send queue and transport buffer fill, and
the server's send timeout ends the socket.

Sampled four times a second until every socket is gone from the server's side and every answer
has ended: the server's RSS and the bytes in the kernel send queues of its sockets
(/proc/net/tcp). Printed per scenario: peaks minus the RSS before the clients connected, per
client; when the server had no socket left; the answers' statuses afterwards (they COMPLETE
without readers). The difference between the scenarios is what a non-reading client holds: the
answers' own text is in both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets
from rich.console import Console
from rich.table import Table

from bench.common import embedded_database, graphql, register
from bench.stream import (
    CREATE,
    free_port,
    process,
    rss,
    server_env,
    stub_server,
    wait_healthy,
)

CHAT = """subscription($input: SendMessageInput!) { chat(input: $input) { __typename
  ... on TokenDelta { offset delta } } }"""
STATUS = """query($id: ID!) { conversation(id: $id) {
  messages(first: 2) { edges { node { role status } } } } }"""
RECEIVE_BUFFER = 4096
SAMPLE_SECONDS = 0.25
OPEN = {"01", "08"}  # /proc/net/tcp states: ESTABLISHED, CLOSE_WAIT (the server has not closed)


@dataclass
class Outcome:
    before: int  # server RSS before the clients connected
    rss: int = 0  # its peak
    send_queue: int = 0  # peak bytes in the kernel send queues of the server's sockets
    ended_after: float | None = None  # seconds until the server's side had no socket left
    statuses: dict[str, int] = field(default_factory=dict)


def server_sockets(port: int, clients: set[int]) -> tuple[int, int]:
    """(open sockets on `port`'s server side whose client port is in `clients`, bytes in their
    kernel send queues)."""
    local = f"0100007F:{port:04X}"
    remotes = {f"0100007F:{client:04X}" for client in clients}
    count = queued = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        parts = line.split()
        if parts[1] == local and parts[2] in remotes and parts[3] in OPEN:
            count += 1
            queued += int(parts[4].split(":")[0], 16)
    return count, queued


async def subscribe(
    ws_url: str, token: str, conversation_id: str, ports: set[int], *, read: bool
) -> object:
    """Subscribe and read the acknowledgement and the first event; then either read the answer
    to its end (`read`) or never read again (the returned socket is kept open by the caller)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
    raw.setblocking(False)
    host, port = ws_url.removeprefix("ws://").split("/", 1)[0].split(":")
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    ports.add(raw.getsockname()[1])
    # max_queue=1: the client library stops reading the socket once one message waits.
    ws = await websockets.connect(
        ws_url,
        sock=raw,
        subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
        max_queue=1,
        ping_interval=None,
    )
    await ws.send(
        json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}})
    )
    await ws.recv()  # connection_ack
    variables = {"input": {"conversationId": conversation_id, "content": "Stream please"}}
    payload = {"query": CHAT, "variables": variables}
    await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
    await ws.recv()  # the first event: the answer is streaming
    if read:
        async for message in ws:
            if json.loads(message)["type"] != "next":
                break
        await ws.close()
    return ws


async def answer_statuses(
    client: httpx.AsyncClient, url: str, conversations: list[tuple[str, str]]
) -> dict[str, int]:
    statuses: dict[str, int] = {}
    for token, conversation_id in conversations:
        data = await graphql(client, url, STATUS, {"id": conversation_id}, token=token)
        for edge in data["conversation"]["messages"]["edges"]:
            if edge["node"]["role"] == "ASSISTANT":
                status = edge["node"]["status"]
                statuses[status] = statuses.get(status, 0) + 1
    return statuses


async def scenario(args: argparse.Namespace, stub_url: str, *, read: bool) -> Outcome:
    """One fresh server, N answers; the clients read them (`read`) or stop reading."""
    async with embedded_database() as (database, name, data_dir):
        port = free_port()
        env = server_env(
            database.url(name), data_dir, stub_url, port, args.window_ms, None, args.send_timeout
        )
        async with process(sys.executable, "-m", "bench.stream", "--serve", env=env) as server:
            base = f"http://127.0.0.1:{port}"
            graphql_url = f"{base}/graphql"
            await wait_healthy(f"{base}/healthz")
            async with httpx.AsyncClient(timeout=120) as client:
                users = [await register(client, graphql_url) for _ in range(-(-args.clients // 3))]
                conversations = []
                for i in range(args.clients):
                    token = users[i % len(users)][1]
                    data = await graphql(client, graphql_url, CREATE, token=token)
                    conversations.append((token, data["createConversation"]["id"]))
                await asyncio.sleep(1)
                outcome = Outcome(before=rss(server.pid))
                ws_url = graphql_url.replace("http://", "ws://")
                started = time.monotonic()
                ports: set[int] = set()
                readers = [
                    asyncio.create_task(subscribe(ws_url, t, c, ports, read=read))
                    for t, c in conversations
                ]
                deadline = started + args.deadline
                next_status = 0.0
                while time.monotonic() < deadline:
                    count, queued = server_sockets(port, ports)
                    outcome.rss = max(outcome.rss, rss(server.pid))
                    outcome.send_queue = max(outcome.send_queue, queued)
                    if len(ports) == args.clients and count == 0 and outcome.ended_after is None:
                        outcome.ended_after = time.monotonic() - started
                    if time.monotonic() >= next_status:
                        next_status = time.monotonic() + 2
                        outcome.statuses = await answer_statuses(client, graphql_url, conversations)
                        if outcome.ended_after is not None and "STREAMING" not in outcome.statuses:
                            break
                    await asyncio.sleep(SAMPLE_SECONDS)
                for task in readers:
                    if task.done() and task.exception() is None:
                        task.result().transport.abort()  # type: ignore[attr-defined]
                    else:
                        task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
    return outcome


async def bench(args: argparse.Namespace) -> None:
    async with stub_server(args.tokens, args.rate) as stub_url:
        reading = await scenario(args, stub_url, read=True)
        stalled = await scenario(args, stub_url, read=False)
    report(args, reading, stalled)


def report(args: argparse.Namespace, reading: Outcome, stalled: Outcome) -> None:
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    table = Table(
        title=f"{args.clients} chat subscribers, each on its own answer; stub at {args.rate:g} "
        f"tokens/s, {args.tokens} tokens; load average {load}"
    )
    for column in (
        "clients",
        "server RSS peak / client",
        "kernel send queue peak / client",
        "sockets ended after",
        "answers afterwards",
    ):
        table.add_column(column, justify="right")
    for label, o in (("reading", reading), ("not reading", stalled)):
        table.add_row(
            label,
            f"{(o.rss - o.before) / args.clients / 1024:,.1f} KiB",
            f"{o.send_queue / args.clients / 1024:,.1f} KiB",
            f"{o.ended_after:,.1f} s" if o.ended_after is not None else "-",
            ", ".join(f"{k} {v}" for k, v in sorted(o.statuses.items())),
        )
    console = Console(width=140)
    console.print(table)
    extra = ((stalled.rss - stalled.before) - (reading.rss - reading.before)) / args.clients
    console.print(
        f"a client that does not read holds {extra / 1024:,.1f} KiB more than one that does"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0, help="tokens/s of each answer")
    parser.add_argument("--tokens", type=int, default=60_000, help="tokens per answer")
    parser.add_argument("--window-ms", type=int, default=30, help="coalescing window")
    parser.add_argument(
        "--send-timeout", type=float, help="the server's ws_send_timeout_seconds (default: its own)"
    )
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="longest wait for the server to end them"
    )
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
