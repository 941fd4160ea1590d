"""Floods against one server while an unrelated user keeps asking `{ me { id } }`.

Starts `ragstream serve` (default settings, embedded PostgreSQL, a throw-away data dir), signs a
bystander in, then runs rounds of phases; each flood phase is preceded by a quiet one, so the
baseline is measured in the same run, under the same machine load:

- quiet: nothing but the bystander
- logins: 50 concurrent `login` calls with unknown emails
- registrations: 150 `register` calls, 15 at a time
- ws-frames: three websockets each sending a `subscribe` holding a 15 MB string
- upload: one 15 MB single-line `.txt` upload, until the document is READY or FAILED

The bystander sends one request at a time (a new one every 10 ms at most) and records each
latency; the table gives p50 / p99 / max per phase over all rounds, the p99 ratio to the quiet
phases, the bystander's errors and what the flood requests got back (by `extensions.code`, or
close code). Target: bystander p99 <= 100 ms and no INTERNAL_SERVER_ERROR anywhere.

    python -m bench.abuse                 # 3 rounds
    python -m bench.abuse --rounds 5
    python -m bench.abuse --floods logins registrations   # only these floods

Loopback only; every phase is bounded in requests and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from bench.common import percentile, serve_process

PASSWORD = "bench password 123"  # noqa: S105  (throw-away accounts on a throw-away server)
ME = "{ me { id } }"
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken }
}"""
REGISTER = """mutation($input: RegisterInput!) { register(input: $input) { accessToken } }"""
UPLOAD = """mutation($file: Upload!) { uploadDocument(file: $file) { id } }"""
DOCUMENT = """query($id: ID!) { document(id: $id) { status error } }"""
FIFTEEN_MB = 15 * 1024 * 1024
QUIET_SECONDS = 4.0
PHASE_LIMIT_SECONDS = 300.0
FLOODS = ("logins", "registrations", "ws-frames", "upload")


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    bystander_errors: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def started_server(port: int) -> Iterator[str]:
    """`ragstream serve` with default settings on a temporary data dir."""
    with tempfile.TemporaryDirectory(prefix="ragstream-abuse-") as data_dir:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RAGSTREAM_") and k not in {"OPENAI_API_KEY", "OPENAI_BASE_URL"}
        }
        env.update(
            {
                "RAGSTREAM_DATA_DIR": data_dir,
                "RAGSTREAM_PORT": str(port),
                "RAGSTREAM_LOG_LEVEL": "warning",
                "RAGSTREAM_JWT_SECRET": secrets.token_urlsafe(48),
            }
        )
        with serve_process(env) as url:
            yield url


async def wait_ready(url: str) -> None:
    ready = url.rsplit("/", 1)[0] + "/readyz"
    async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(180):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(ready)).status_code == 200:
                    return
            await asyncio.sleep(0.5)


def codes(response: httpx.Response) -> list[str]:
    """The error codes of a GraphQL answer ("ok" when there are none, "HTTP n" when not JSON)."""
    try:
        body = response.json()
    except ValueError:
        return [f"HTTP {response.status_code} (not JSON)"]
    errors = body.get("errors") or []
    if not errors:
        return ["ok"]
    return [str((e.get("extensions") or {}).get("code", "no code")) for e in errors]


async def call(
    client: httpx.AsyncClient,
    url: str,
    query: str,
    variables: dict[str, Any] | None = None,
    token: str | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.post(
        url, json={"query": query, "variables": variables or {}}, headers=headers
    )


async def bystander(url: str, token: str, phase: Phase, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = await call(client, url, ME, token=token)
                outcome = codes(response)
            except httpx.HTTPError as exc:
                outcome = [type(exc).__name__]
            elapsed = time.perf_counter() - started
            if outcome == ["ok"]:
                phase.latencies.append(elapsed)
            else:
                phase.bystander_errors.update(outcome)
            await asyncio.sleep(max(0.0, 0.01 - elapsed))


async def quiet(url: str, phase: Phase) -> None:
    await asyncio.sleep(QUIET_SECONDS)


async def logins(url: str, phase: Phase) -> None:
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            variables = {
                "email": f"nobody-{uuid.uuid4().hex[:8]}@example.com",
                "password": "x" * 12,
            }
            phase.outcomes.update(codes(await call(client, url, LOGIN, variables)))

        await asyncio.gather(*(one(i) for i in range(50)))


async def registrations(url: str, phase: Phase) -> None:
    gate = asyncio.Semaphore(15)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> None:
            account = {
                "email": f"flood-{uuid.uuid4().hex[:10]}@example.com",
                "password": PASSWORD,
                "displayName": "Flood",
            }
            async with gate:
                response = await call(client, url, REGISTER, {"input": account})
            phase.outcomes.update(codes(response))

        await asyncio.gather(*(one(i) for i in range(150)))


async def ws_frames(url: str, phase: Phase) -> None:
    ws_url = url.replace("http://", "ws://")
    literal = "x" * FIFTEEN_MB
    message = json.dumps(
        {"id": "1", "type": "subscribe", "payload": {"query": f'{{ a(b: "{literal}") }}'}}
    )

    async def one() -> None:
        try:
            async with websockets.connect(
                ws_url,
                subprotocols=[websockets.Subprotocol("graphql-transport-ws")],
                max_size=None,
            ) as ws:
                await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
                await ws.recv()
                await ws.send(message)
                async with asyncio.timeout(60):
                    while True:
                        await ws.recv()
        except websockets.ConnectionClosed as closed:
            phase.outcomes[f"close {closed.rcvd.code if closed.rcvd else 'none'}"] += 1
        except (OSError, TimeoutError) as exc:
            phase.outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(one() for _ in range(3)))


async def upload(url: str, phase: Phase, token: str) -> None:
    # A new first word each round: the same content twice would be refused as a duplicate.
    line = uuid.uuid4().hex.encode() + b" the same short phrase again" * (FIFTEEN_MB // 28)
    operations = json.dumps({"query": UPLOAD, "variables": {"file": None}})
    async with httpx.AsyncClient(timeout=120) as client:
        response = await client.post(
            url,
            data={"operations": operations, "map": json.dumps({"0": ["variables.file"]})},
            files={"0": ("flood.txt", line, "text/plain")},
            headers={"Authorization": f"Bearer {token}", "Apollo-Require-Preflight": "1"},
        )
        phase.outcomes.update(f"upload {c}" for c in codes(response))
        data = response.json().get("data") or {}
        if not data.get("uploadDocument"):
            return
        document_id = data["uploadDocument"]["id"]
        async with asyncio.timeout(PHASE_LIMIT_SECONDS):
            while True:
                answer = (await call(client, url, DOCUMENT, {"id": document_id}, token)).json()
                status = answer["data"]["document"]["status"]
                if status in ("READY", "FAILED"):
                    phase.outcomes[f"document {status}"] += 1
                    return
                await asyncio.sleep(0.2)


async def measured(
    url: str, token: str, phase: Phase, flood: Callable[[str, Phase], Awaitable[None]]
) -> None:
    stop = asyncio.Event()
    probe = asyncio.create_task(bystander(url, token, phase, stop))
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PHASE_LIMIT_SECONDS):
            await flood(url, phase)
        # At least a quiet phase's worth of samples after a short flood.
        await asyncio.sleep(max(0.0, QUIET_SECONDS - (time.perf_counter() - started)))
    finally:
        phase.seconds += time.perf_counter() - started
        stop.set()
        await probe


async def sign_up(url: str) -> str:
    async with httpx.AsyncClient(timeout=60) as client:
        account = {
            "email": f"bystander-{uuid.uuid4().hex[:8]}@example.com",
            "password": PASSWORD,
            "displayName": "Bystander",
        }
        body = (await call(client, url, REGISTER, {"input": account})).json()
        token: str = body["data"]["register"]["accessToken"]
        return token


def print_table(phases: dict[str, Phase], rounds: int, load: tuple[float, float]) -> None:
    quiet_p99 = percentile(phases["quiet"].latencies, 99)
    print(f"\nrounds: {rounds}; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after")
    print(
        "| phase | bystander requests | p50 ms | p99 ms | max ms | p99 / quiet | "
        "bystander errors | flood outcomes |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for phase in phases.values():
        values = phase.latencies or [float("nan")]
        p99 = percentile(values, 99)
        errors = ", ".join(f"{k} {v}" for k, v in phase.bystander_errors.items()) or "0"
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(phase.outcomes.items())) or "-"
        print(
            f"| {phase.name} | {len(phase.latencies)} | {percentile(values, 50) * 1000:.1f} | "
            f"{p99 * 1000:.1f} | {max(values) * 1000:.1f} | {p99 / quiet_p99:.2f} | "
            f"{errors} | {outcomes} |"
        )
    internal = sum(
        p.outcomes["INTERNAL_SERVER_ERROR"] + p.bystander_errors["INTERNAL_SERVER_ERROR"]
        for p in phases.values()
    )
    worst = max(percentile(p.latencies, 99) for p in phases.values() if p.latencies)
    print(
        f"\nworst bystander p99 {worst * 1000:.1f} ms (target <= 100); "
        f"INTERNAL_SERVER_ERROR answers: {internal} (target 0)"
    )


async def run(args: argparse.Namespace) -> None:
    port = free_port()
    with started_server(port) as url:
        await wait_ready(url)
        token = await sign_up(url)
        uploader = await sign_up(url)
        floods: dict[str, Callable[[str, Phase], Awaitable[None]]] = {
            name: flood
            for name, flood in {
                "logins": logins,
                "registrations": registrations,
                "ws-frames": ws_frames,
                "upload": lambda u, p: upload(u, p, uploader),
            }.items()
            if name in args.floods
        }
        phases = {name: Phase(name) for name in ["quiet", *floods]}
        load_before = os.getloadavg()[0]
        for round_ in range(args.rounds):
            for name, flood in floods.items():
                print(f"round {round_ + 1}: quiet, then {name}", flush=True)
                await measured(url, token, phases["quiet"], quiet)
                await measured(url, token, phases[name], flood)
        print_table(phases, args.rounds, (load_before, os.getloadavg()[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floods", nargs="+", choices=FLOODS, default=list(FLOODS))
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
