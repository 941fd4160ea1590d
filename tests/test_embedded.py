"""`ragstream serve` end to end, as a user runs it: no database URL, the embedded PostgreSQL in the
data dir, GraphiQL, a clean stop on SIGTERM, data kept across a restart, one server per data dir,
create-admin sharing the running database.

Slow (it starts PostgreSQL twice), so it is one test.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
import httpx

from tests.conftest import argon2_environment
from tests.ports import free_port
from tests.support import PASSWORD

REGISTER = """mutation($input: RegisterInput!) {
  register(input: $input) { accessToken user { id } }
}"""
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken user { id } }
}"""


def command() -> list[str]:
    script = Path(sys.executable).with_name("ragstream")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ragstream.cli"]


def environment(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAGSTREAM_", "OPENAI_"))}
    # Cheap password hashing keeps the test quick; nothing else is configured.
    env.update(RAGSTREAM_DATA_DIR=str(data_dir), **argon2_environment())
    return env


def postgres_pids(data_dir: Path) -> list[int]:
    """PostgreSQL processes whose command line names this data dir."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "postgres" in cmdline and str(data_dir) in cmdline:
            pids.append(int(entry.name))
    return pids


@contextmanager
def serving(data_dir: Path, port: int, cwd: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(  # noqa: S603  (our own console script, fixed arguments)
        [*command(), "serve", "--port", str(port), *args],
        env=environment(data_dir),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def wait_healthy(
    client: httpx.AsyncClient, base: str, process: subprocess.Popen[bytes]
) -> None:
    # Polls until the server answers; the bound only keeps a broken start from hanging the suite.
    for _ in range(1200):
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
        try:
            if (await client.get(f"{base}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("ragstream serve did not answer /healthz")


async def stop(process: subprocess.Popen[bytes]) -> str:
    process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(process.wait, 120)
    output = process.stdout.read().decode() if process.stdout else ""
    assert code == 0, output
    assert "ragstream stopped" in output, output
    assert "Traceback" not in output, output
    # One banner says where it listens and with what; set-up chatter stays out of the log.
    assert "ragstream is serving GraphQL at http://127.0.0.1:" in output, output
    noises = ("setup plugin", "XDG_RUNTIME_DIR", "embedded PostgreSQL in", "Uvicorn running")
    for noise in (*noises, "Pool disposed", "[None]"):
        assert noise not in output, output
    return output


async def graphql(
    client: httpx.AsyncClient, base: str, query: str, variables: dict[str, object]
) -> dict[str, object]:
    response = await client.post(f"{base}/graphql", json={"query": query, "variables": variables})
    body: dict[str, object] = response.json()
    assert "errors" not in body, body
    data = body["data"]
    assert isinstance(data, dict)
    return data


async def test_serve_end_to_end_on_the_embedded_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    email = "e2e@example.com"
    async with httpx.AsyncClient(timeout=60) as client:
        with serving(data_dir, port, tmp_path) as first:
            await wait_healthy(client, base, first)
            assert (await client.get(f"{base}/readyz")).status_code == 200
            page = await client.get(f"{base}/graphql", headers={"accept": "text/html"})
            assert page.status_code == 200
            assert "graphiql" in page.text.lower()

            registered = await graphql(
                client,
                base,
                REGISTER,
                {"input": {"email": email, "password": PASSWORD, "displayName": "E2E"}},
            )
            assert postgres_pids(data_dir)

            # A second server on the same data dir refuses to start, and says why.
            second = await asyncio.to_thread(
                subprocess.run,
                [*command(), "serve", "--port", str(free_port())],
                env=environment(data_dir),
                cwd=tmp_path,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert second.returncode != 0
            assert b"already serving data dir" in second.stderr

            # Other commands join the running database instead of starting a second one ...
            admin = await asyncio.to_thread(
                subprocess.run,
                [*command(), "create-admin", "--email", "root@example.com", "--password", PASSWORD],
                env=environment(data_dir),
                cwd=tmp_path,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert admin.returncode == 0, admin.stderr.decode()
            assert b"created admin root@example.com" in admin.stdout
            assert admin.stderr == b""  # nothing about starting a database it only joined
            # ... and leave it running for the server when they finish.
            assert (await client.get(f"{base}/readyz")).status_code == 200
            root = await graphql(
                client, base, LOGIN, {"email": "root@example.com", "password": PASSWORD}
            )
            assert isinstance(root["login"], dict)

            await stop(first)
        assert postgres_pids(data_dir) == []
        assert (data_dir / "jwt_secret").exists()

        with serving(data_dir, port, tmp_path) as again:
            await wait_healthy(client, base, again)
            logged_in = await graphql(client, base, LOGIN, {"email": email, "password": PASSWORD})
            register_payload = registered["register"]
            login_payload = logged_in["login"]
            assert isinstance(register_payload, dict)
            assert isinstance(login_payload, dict)
            assert login_payload["user"] == register_payload["user"]
            # The development secret was kept in the data dir: old tokens still work.
            me = await client.post(
                f"{base}/graphql",
                json={"query": "{ me { id } }"},
                headers={"authorization": f"Bearer {register_payload['accessToken']}"},
            )
            assert me.json() == {"data": {"me": register_payload["user"]}}
            await stop(again)
        assert postgres_pids(data_dir) == []


async def live_leases(data_dir: Path) -> int:
    """Server processes holding a live lease, read from the embedded server (its socket
    directory is in `postmaster.pid`)."""
    socket_dir = (data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[4]
    conn = await asyncpg.connect(host=socket_dir, user="postgres", database="ragstream")
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM server_processes WHERE lease_expires_at > now()"
        )
    finally:
        await conn.close()
    return count


async def test_serve_with_two_workers_starts_one_embedded_database_for_both(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(timeout=60) as client:
        with serving(data_dir, port, tmp_path, "--workers", "2") as server:
            await wait_healthy(client, base, server)
            assert len(postgres_pids(data_dir)) == 1  # one postmaster, started once

            async with asyncio.timeout(120):  # both workers up (a hang guard, not a timing)
                while await live_leases(data_dir) != 2:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            registered = await graphql(
                client,
                base,
                REGISTER,
                {"input": {"email": "w@example.com", "password": PASSWORD, "displayName": "W"}},
            )
            assert isinstance(registered["register"], dict)

            await stop(server)
        assert postgres_pids(data_dir) == []  # stopped with the server, once both were done
