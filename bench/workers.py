"""List throughput of `ragstream serve --workers 2` against `--workers 1` on one database.

Starts one embedded PostgreSQL, then two servers on it at once (each on its own port, through
RAGSTREAM_DATABASE_URL): one with `--workers 1`, one with `--workers 2`. Seeds evaluations
through the first (both see them), then `wrk` (one thread, C: the client costs little CPU)
keeps N connections busy with `evaluations(first: 20)` and owners, alternating between the two
servers for several rounds (the idle one only renews its lease). Prints each round, the medians,
the load average before and after, and the ratio of the medians.

Each measurement also reads the CPU time (from /proc) of the measured server (supervisor and
workers), of PostgreSQL (postmaster and its processes) and of `wrk`, per answered request: S, P
and W. On a machine of C cores shared by all three, no number of workers serves more than
C / (S + P + W) requests a second; against the one-worker rate R that caps the ratio at
C / ((S + P + W) · R), which the table ends with (from the one-worker rounds' medians). When one
worker keeps its core busy (R ≈ 1 / S) that is C·S / (S + P + W).

    python -m bench.workers                          # 5 rounds of 10 s, 32 connections
    python -m bench.workers --rounds 7 --duration 15 --workers 2

The servers register accounts from one loopback address: their sign-in limits live in
PostgreSQL now, so RAGSTREAM_REGISTRATIONS_PER_HOUR_PER_CLIENT (and the login limits) are
raised for them (bench/queries.py: _server_env), as every benchmark that registers must.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import statistics
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson

from bench.common import embedded_database, serve_process
from bench.peers import WRK_SCRIPT, tree_cpu_seconds
from bench.queries import LIST_QUERY, Api, _server_env, client_for, free_port, seed, wait_ready


@contextlib.contextmanager
def serve(database_url: str, workers: int, jwt_secret: str, extra: dict[str, str]) -> Iterator[str]:
    """`ragstream serve --workers N` on the database; yields its GraphQL URL."""
    with tempfile.TemporaryDirectory(prefix="ragstream-bench-") as data_dir:
        port = free_port()
        env = {
            **_server_env(data_dir, port),
            "RAGSTREAM_DATABASE_URL": database_url,
            # One secret: a token signed by either server is good on both.
            "RAGSTREAM_JWT_SECRET": jwt_secret,
            **extra,
        }
        with serve_process(env, "--workers", str(workers)) as url:
            yield url


@dataclasses.dataclass
class Measured:
    rate: float  # answered requests per second
    server_ms: float  # CPU per request: the measured server's processes
    database_ms: float  # PostgreSQL's
    client_ms: float  # wrk's


def cpu_seconds_of_children() -> float:
    """CPU time of this process's children that have exited and been waited for."""
    times = os.times()
    return times.children_user + times.children_system


def server_pid(workers: int) -> int:
    """The `ragstream serve --workers N` this process started (its supervisor, or the server)."""
    wanted = ["serve", "--workers", str(workers)]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        if parent == os.getpid() and argv[-4:-1] == wanted:
            return int(entry.name)
    raise RuntimeError(f"no `ragstream serve --workers {workers}` started by this process")


async def measure(
    url: str, token: str, connections: int, seconds: float, server: int, postmaster: int
) -> Measured:
    """`wrk` against one server, with the CPU each party spent per answered request."""
    before = (tree_cpu_seconds(server), tree_cpu_seconds(postmaster), cpu_seconds_of_children())
    requests, elapsed = await wrk(url, token, connections, seconds)
    # Requests still in flight when wrk stopped are finished (and counted) by now.
    await asyncio.sleep(0.2)
    after = (tree_cpu_seconds(server), tree_cpu_seconds(postmaster), cpu_seconds_of_children())
    server_s, database_s, client_s = (b - a for a, b in zip(before, after, strict=True))
    per_request = 1000 / requests
    return Measured(
        requests / elapsed, server_s * per_request, database_s * per_request, client_s * per_request
    )


async def wrk(url: str, token: str, connections: int, seconds: float) -> tuple[int, float]:
    """Answered requests and seconds of the list query; any failed answer stops the
    benchmark."""
    with tempfile.NamedTemporaryFile("wb", suffix=".json") as body:
        body.write(orjson.dumps({"query": LIST_QUERY, "variables": {"first": 20}}))
        body.flush()
        env = {**os.environ, "BENCH_BODY_FILE": body.name, "BENCH_AUTHORIZATION": f"Bearer {token}"}
        process = await asyncio.create_subprocess_exec(
            "wrk",
            *("-t", "1", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout", "30s"),
            *("-s", str(WRK_SCRIPT), url),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
    lines = [text for text in out.decode().splitlines() if text.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed: {out.decode()} {err.decode()}")
    result: dict[str, int] = orjson.loads(lines[-1])
    if result["bad"] or result["socket_errors"]:
        raise RuntimeError(f"failed requests on {url}: {result}")
    return result["requests"], result["duration_us"] / 1e6


@contextlib.asynccontextmanager
async def database_url() -> AsyncIterator[tuple[str, int]]:
    """The database's URL and its postmaster's process id."""
    async with embedded_database() as (database, name, data_dir):
        postmaster = int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        yield database.url(name), postmaster


async def run(args: argparse.Namespace) -> None:
    async with database_url() as (url, postmaster):
        secret = secrets.token_urlsafe(48)
        extra = dict(item.split("=", 1) for item in args.server_env)
        with (
            serve(url, 1, secret, extra) as one,
            serve(url, args.workers, secret, extra) as many,
        ):
            await asyncio.gather(wait_ready(one), wait_ready(many))
            async with client_for(16) as client:
                tokens = await seed(Api(client, one), args.owners, args.per_owner)
            token = tokens[0]
            servers = {
                "--workers 1": (one, server_pid(1)),
                f"--workers {args.workers}": (many, server_pid(args.workers)),
            }
            for server, _ in servers.values():  # warm both (pools, caches, code paths)
                await wrk(server, token, args.connections, args.warmup)
            load_before = os.getloadavg()
            rounds: dict[str, list[Measured]] = {name: [] for name in servers}
            for round_ in range(args.rounds):
                # Interleaved, and alternating which goes first: drift hits both alike.
                order = list(servers.items())
                for name, (server, pid) in order if round_ % 2 == 0 else order[::-1]:
                    measured = await measure(
                        server, token, args.connections, args.duration, pid, postmaster
                    )
                    rounds[name].append(measured)
                    print(
                        f"round {round_ + 1}: {name:<12} {measured.rate:8.1f} req/s, CPU ms per "
                        f"request: server {measured.server_ms:.3f}, PostgreSQL "
                        f"{measured.database_ms:.3f}, wrk {measured.client_ms:.3f}",
                        flush=True,
                    )
            load_after = os.getloadavg()
    rates = {name: [m.rate for m in values] for name, values in rounds.items()}
    single, multi = (statistics.median(values) for values in rates.values())
    print(
        f"\nevaluations(first: 20) + owner, {args.owners * args.per_owner} evaluations, "
        f"{args.connections} connections (wrk, 1 thread), {args.rounds} interleaved rounds of "
        f"{args.duration:g} s; {os.cpu_count()} CPUs; load average (1/5/15 min) before "
        f"{'/'.join(f'{x:.2f}' for x in load_before)}, after "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}\n"
    )
    print(
        "| server       | median req/s | min req/s | max req/s "
        "| CPU ms/request: server / PostgreSQL / wrk (medians) |"
    )
    print("|--------------|--------------|-----------|-----------|---|")
    for name, values in rates.items():
        cpu = [
            statistics.median(getattr(m, field) for m in rounds[name])
            for field in ("server_ms", "database_ms", "client_ms")
        ]
        print(
            f"| {name:<12} | {statistics.median(values):12.1f} | {min(values):9.1f} "
            f"| {max(values):9.1f} | {cpu[0]:.3f} / {cpu[1]:.3f} / {cpu[2]:.3f} |"
        )
    print(f"\nratio --workers {args.workers} / --workers 1 (medians): {multi / single:.2f}x")
    single_rounds = rounds["--workers 1"]
    server, database, client = (
        statistics.median(getattr(m, field) for m in single_rounds)
        for field in ("server_ms", "database_ms", "client_ms")
    )
    cores = os.cpu_count() or 1
    ceiling = cores * 1000 / (server + database + client)
    print(
        f"one worker kept {server * single / 1000:.2f} cores busy; with {cores} cores shared by "
        f"server, PostgreSQL and wrk at the one-worker rounds' CPU per request (S {server:.3f}, "
        f"P {database:.3f}, W {client:.3f} ms), no number of workers serves more than "
        f"{ceiling:.0f} req/s: a ratio of at most {ceiling / single:.2f}x"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers of the second server")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a RAGSTREAM_* setting for both servers (repeatable)",
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--owners", type=int, default=4)
    parser.add_argument("--per-owner", type=int, default=25)
    args = parser.parse_args()
    if not 2 <= args.workers <= 64 or not 1 <= args.rounds <= 50:
        parser.error("workers must be 2..64 and rounds 1..50")
    if shutil.which("wrk") is None:
        parser.error("wrk is needed (Debian: apt-get install wrk)")
    return args


def main() -> None:
    args = parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
