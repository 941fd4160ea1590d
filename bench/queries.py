"""Throughput and latency of evaluation lists with owners, under concurrent load.

Starts a ragstream server on a throw-away data dir (embedded PostgreSQL) unless --url is given,
seeds evaluations for several owners, then keeps N connections busy with
`evaluations(first: 20)` and `evaluations(first: 50)` (each node with its owner) for a bounded
time per scenario and prints requests/s, p50 and p99.

    python bench/queries.py                      # self-started server, 32 connections, 10 s
    python bench/queries.py --duration 20 --connections 64
    python bench/queries.py --url http://127.0.0.1:8000/graphql --email a@b.c --password ...

With --url, pass an admin's credentials to list everyone's evaluations (owners vary across the
page); without them a fresh account is registered and its own evaluations are listed.
Loopback only: the client refuses other hosts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.common import serve_process

PASSWORD = "bench password 123"  # noqa: S105  (throw-away accounts on a throw-away server)
LIST_QUERY = """query($first: Int!) {
  evaluations(first: $first) {
    totalCount
    edges { cursor node {
      id title companyName status overallScore
      criteria { name weight score }
      owner { id displayName }
    } }
  }
}"""
CREATE = """mutation($input: CreateEvaluationInput!) { createEvaluation(input: $input) { id } }"""
REGISTER = """mutation($input: RegisterInput!) { register(input: $input) { accessToken } }"""
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken }
}"""


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def row(self, name: str, connections: int, seconds: float) -> str:
        count = len(self.latencies)
        if count >= 2:
            cuts = statistics.quantiles(self.latencies, n=100, method="inclusive")
            p50, p99 = cuts[49] * 1000, cuts[98] * 1000
        else:
            p50 = p99 = float("nan")
        return (
            f"| {name:<34} | {connections:>5} | {count:>8} | {count / seconds:>8.1f} "
            f"| {p50:>7.1f} | {p99:>7.1f} | {self.errors:>6} |"
        )


HEADER = (
    f"| {'query':<34} | {'conns':>5} | {'requests':>8} | {'req/s':>8} "
    f"| {'p50 ms':>7} | {'p99 ms':>7} | {'errors':>6} |"
)


class Api:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def call(
        self, query: str, variables: dict[str, Any], token: str | None = None
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = await self.client.post(
            self.url, json={"query": query, "variables": variables}, headers=headers
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data

    async def register(self, email: str) -> str:
        data = await self.call(
            REGISTER,
            {"input": {"email": email, "password": PASSWORD, "displayName": email.split("@")[0]}},
        )
        token: str = data["register"]["accessToken"]
        return token

    async def login(self, email: str, password: str) -> str:
        data = await self.call(LOGIN, {"email": email, "password": password})
        token: str = data["login"]["accessToken"]
        return token


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_env(data_dir: str, port: int) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("RAGSTREAM_") and k not in {"OPENAI_API_KEY", "OPENAI_BASE_URL"}
    }
    env.update(
        {
            "RAGSTREAM_DATA_DIR": data_dir,
            "RAGSTREAM_HOST": "127.0.0.1",
            "RAGSTREAM_PORT": str(port),
            "RAGSTREAM_LOG_LEVEL": "warning",
            "RAGSTREAM_JWT_SECRET": secrets.token_urlsafe(48),
            "RAGSTREAM_ACCESS_TOKEN_TTL_SECONDS": "3600",
            # Seeding registers accounts; the OWASP minimum keeps that quick.
            "RAGSTREAM_ARGON2_TIME_COST": "2",
            "RAGSTREAM_ARGON2_MEMORY_KIB": "19456",
            "RAGSTREAM_ARGON2_PARALLELISM": "1",
            "RAGSTREAM_LOGIN_ATTEMPTS_PER_MINUTE": "10000",
            "RAGSTREAM_REGISTRATIONS_PER_HOUR": "1000000",
            "RAGSTREAM_REGISTRATIONS_PER_HOUR_PER_CLIENT": "1000000",
        }
    )
    return env


@contextlib.contextmanager
def started_server() -> Iterator[tuple[str, dict[str, str]]]:
    """`ragstream serve` on a temporary data dir; yields the GraphQL URL and its environment."""
    with tempfile.TemporaryDirectory(prefix="ragstream-bench-") as data_dir:
        port = free_port()
        env = _server_env(data_dir, port)
        with serve_process(env, stop_seconds=30) as url:
            yield url, env


async def wait_ready(url: str, limit_seconds: float = 120.0) -> None:
    ready = url.rsplit("/", 1)[0] + "/readyz"
    deadline = time.monotonic() + limit_seconds
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(ready)).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise RuntimeError(f"server at {url} did not become ready in {limit_seconds:.0f} s")


def promote(env: dict[str, str], email: str) -> None:
    """Make an account admin with the CLI (it joins the server's embedded PostgreSQL)."""
    # create-admin also sets the password: keep the one the account was registered with.
    command = ["create-admin", "--email", email, "--password", PASSWORD]
    subprocess.run(  # noqa: S603  (our own CLI, fixed arguments)
        [sys.executable, "-m", "ragstream.cli", *command],
        env=env,
        check=True,
        capture_output=True,
    )


async def seed(api: Api, owners: int, per_owner: int) -> list[str]:
    """Accounts with evaluations of five criteria each; returns their tokens."""
    run = uuid.uuid4().hex[:8]
    tokens = await asyncio.gather(
        *(api.register(f"owner{i}-{run}@bench.example") for i in range(owners))
    )
    limit = asyncio.Semaphore(16)

    async def create(token: str, index: int) -> None:
        criteria = [
            {"name": f"Criterion {c}", "weight": c + 1, "score": (index + c) % 6 or None}
            for c in range(5)
        ]
        async with limit:
            await api.call(
                CREATE,
                {
                    "input": {
                        "title": f"Evaluation {index}",
                        "companyName": f"Company {index % 17}",
                        "projectType": "ERP_MIGRATION",
                        "criteria": criteria,
                    }
                },
                token,
            )

    await asyncio.gather(*(create(token, i) for token in tokens for i in range(per_owner)))
    return list(tokens)


async def hammer(api: Api, token: str, first: int, connections: int, seconds: float) -> Stats:
    stats = Stats()
    payload = {"query": LIST_QUERY, "variables": {"first": first}}
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                response = await api.client.post(api.url, json=payload, headers=headers)
                ok = response.status_code == 200 and "errors" not in response.json()
            except httpx.HTTPError:
                ok = False
            if ok:
                stats.latencies.append(time.perf_counter() - started)
            else:
                stats.errors += 1

    await asyncio.gather(*(worker() for _ in range(connections)))
    return stats


@contextlib.asynccontextmanager
async def client_for(connections: int) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        yield client


async def run(args: argparse.Namespace, url: str, env: dict[str, str] | None) -> None:
    await wait_ready(url)
    async with client_for(args.connections) as client:
        api = Api(client, url)
        print(f"seeding {args.owners} owners x {args.per_owner} evaluations ...", flush=True)
        tokens = await seed(api, args.owners, args.per_owner)
        if args.email:
            token = await api.login(args.email, args.password or "")
            viewer = f"{args.email} (given)"
        elif env is not None:
            admin_email = f"admin-{uuid.uuid4().hex[:8]}@bench.example"
            await api.register(admin_email)
            await asyncio.to_thread(promote, env, admin_email)
            token = await api.login(admin_email, PASSWORD)
            viewer = "an admin (pages mix all owners)"
        else:
            token = tokens[0]
            viewer = "one owner (its own evaluations)"
        total = (await api.call(LIST_QUERY, {"first": 1}, token))["evaluations"]["totalCount"]
        print(
            f"server {url}; viewer {viewer}; {total} evaluations visible; "
            f"{args.connections} connections; {args.duration:g} s per query after "
            f"{args.warmup:g} s warm-up; client and server on {os.cpu_count()} CPUs\n"
        )
        rows = []
        for first in (20, 50):
            await hammer(api, token, first, args.connections, args.warmup)
            stats = await hammer(api, token, first, args.connections, args.duration)
            rows.append(
                stats.row(f"evaluations(first: {first}) + owner", args.connections, args.duration)
            )
    print(HEADER)
    print("|" + "|".join("-" * len(cell) for cell in HEADER.split("|")[1:-1]) + "|")
    for row in rows:
        print(row)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="GraphQL URL of a running server (loopback only)")
    parser.add_argument("--email", help="admin account to sign in with (with --url)")
    parser.add_argument("--password", help="its password")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per query")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--owners", type=int, default=8)
    parser.add_argument("--per-owner", type=int, default=25)
    args = parser.parse_args()
    if args.url and urlsplit(args.url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        parser.error("--url must point at a loopback address")
    if not 1 <= args.connections <= 256 or not 0 < args.duration <= 300:
        parser.error("connections must be 1..256 and duration 0..300 s")
    return args


def main() -> None:
    args = parse_args()
    if args.url:
        asyncio.run(run(args, args.url, None))
        return
    with started_server() as (url, env):
        asyncio.run(run(args, url, env))


if __name__ == "__main__":
    main()
