"""Sign-in and sign-up under load: hashing holds no connection, waits are bounded, sign-ups are
limited per address and overall, and an exhausted pool answers a clean error."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ragstream.domain.users.passwords import PasswordHasher
from tests import raw
from tests.conftest import make_settings
from tests.support import PASSWORD, LiveServer, Result, running_server

ME = "{ me { id } }"
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken }
}"""
REGISTER = """mutation($input: RegisterInput!) { register(input: $input) { user { id } } }"""


@asynccontextmanager
async def server_with(
    database_url: str, tmp_path: Path, **overrides: Any
) -> AsyncIterator[LiveServer]:
    async with running_server(make_settings(database_url, tmp_path, **overrides)) as server:
        yield server


async def register(server: LiveServer, email: str, client_address: str | None = None) -> Result:
    return await raw.graphql(
        server,
        REGISTER,
        {"input": {"email": email, "password": PASSWORD, "displayName": "N"}},
        client_address=client_address,
    )


async def login(server: LiveServer, email: str) -> Result:
    return await raw.graphql(server, LOGIN, {"email": email, "password": PASSWORD})


async def user_count(server: LiveServer) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM users")) or 0)


@asynccontextmanager
async def every_hash_slot_taken(server: LiveServer) -> AsyncIterator[None]:
    """Takes the hasher's slots, as a flood of sign-ins already hashing would."""
    hasher = server.state.auth.hasher
    for _ in range(hasher.concurrency):
        await hasher.slots.acquire()
    try:
        yield
    finally:
        for _ in range(hasher.concurrency):
            hasher.slots.release()


async def test_a_sign_in_that_cannot_start_hashing_in_time_is_rate_limited(
    database_url: str, tmp_path: Path
) -> None:
    async with server_with(
        database_url, tmp_path, password_hash_concurrency=1, password_hash_wait_seconds=0.2
    ) as server:
        account = await server.register()
        before = await user_count(server)
        async with every_hash_slot_taken(server):
            signed_in = await login(server, account.email)
            signed_up = await register(server, "new@example.com")
        for result in (signed_in, signed_up):
            assert result.code == "RATE_LIMITED"
            extensions = result.errors[0]["extensions"]
            assert extensions["reason"] == "SERVER_BUSY"
            assert extensions["limit"] == 1
        assert await user_count(server) == before
        (await login(server, account.email)).ok()


CHANGE_PASSWORD = """mutation($current: String!, $new: String!) {
  changePassword(currentPassword: $current, newPassword: $new)
}"""


@pytest.mark.parametrize("operation", ["login", "register", "changePassword"])
async def test_no_connection_is_held_while_a_sign_in_waits_for_its_hash(
    database_url: str, tmp_path: Path, operation: str
) -> None:
    async with server_with(
        database_url,
        tmp_path,
        db_pool_size=1,
        db_max_overflow=0,
        db_pool_timeout=2.0,
        password_hash_concurrency=1,
        password_hash_wait_seconds=60.0,
    ) as server:
        bystander = await server.register()
        waiting_for_hash: dict[str, Callable[[], Coroutine[Any, Any, Result]]] = {
            "login": lambda: login(server, bystander.email),
            "register": lambda: register(server, "new@example.com"),
            # Read the viewer first, so the request's connection was in use before the hash.
            "changePassword": lambda: raw.graphql(
                server,
                CHANGE_PASSWORD,
                {"current": PASSWORD, "new": "another password"},
                token=bystander.access_token,
            ),
        }
        async with every_hash_slot_taken(server):
            signing_in = asyncio.create_task(waiting_for_hash[operation]())
            while server.state.auth.hasher.waiting == 0:
                assert not signing_in.done(), signing_in.result()
                await asyncio.sleep(0.01)
            # The only connection of the pool is free while the sign-in waits.
            me = await server.execute(ME, token=bystander.access_token)
            assert me.ok()["me"]["id"] == bystander.id
        (await signing_in).ok()


async def test_a_flood_of_sign_ins_never_answers_an_internal_error(
    database_url: str, tmp_path: Path
) -> None:
    async with server_with(
        database_url,
        tmp_path,
        db_pool_size=2,
        db_max_overflow=0,
        password_hash_concurrency=1,
        password_hash_wait_seconds=0.05,
    ) as server:
        results = await asyncio.gather(
            *(login(server, f"nobody-{i}@example.com") for i in range(30))
        )
    assert {r.code for r in results} <= {"UNAUTHENTICATED", "RATE_LIMITED"}


async def test_sign_ups_are_limited_per_client_address(database_url: str, tmp_path: Path) -> None:
    async with server_with(database_url, tmp_path, registrations_per_hour_per_client=2) as server:
        for i in range(2):
            (await register(server, f"a{i}@example.com")).ok()
        limited = await register(server, "a2@example.com")
        elsewhere = await register(server, "b@example.com", client_address="127.0.0.2")

        assert limited.code == "RATE_LIMITED"
        extensions = limited.errors[0]["extensions"]
        assert extensions["limit"] == 2
        assert datetime.fromisoformat(extensions["resetAt"]) > datetime.now(UTC)
        elsewhere.ok()
        assert await user_count(server) == 3


async def test_sign_ups_are_limited_overall(database_url: str, tmp_path: Path) -> None:
    async with server_with(database_url, tmp_path, registrations_per_hour=2) as server:
        (await register(server, "a@example.com", client_address="127.0.0.2")).ok()
        (await register(server, "b@example.com", client_address="127.0.0.3")).ok()
        limited = await register(server, "c@example.com", client_address="127.0.0.4")

        assert limited.code == "RATE_LIMITED"
        assert "resetAt" in limited.errors[0]["extensions"]
        assert await user_count(server) == 2


async def test_a_burst_of_unknown_emails_shares_one_dummy_hash() -> None:
    """Every unknown email is checked against the same dummy hash, made once for the burst."""
    hasher = PasswordHasher(time_cost=1, memory_kib=64, parallelism=1, concurrency=2)
    made: list[str] = []
    real_hash = hasher.hash

    async def counted_hash(password: str) -> str:
        made.append(password)
        return await real_hash(password)

    hasher.hash = counted_hash  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(hasher.burn(f"guess number {i}") for i in range(12)))
        await hasher.burn("a later guess")
    finally:
        hasher.close()
    assert len(made) == 1


def test_hashes_leave_a_core_to_serving_by_default() -> None:
    hasher = PasswordHasher(time_cost=1, memory_kib=64, parallelism=1)
    assert hasher.concurrency == max(1, (os.cpu_count() or 1) - 1)
    assert PasswordHasher(time_cost=1, memory_kib=64, parallelism=1, concurrency=3).concurrency == 3
