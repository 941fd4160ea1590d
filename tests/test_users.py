"""Accounts administration: listing, reading, updating, admin rights, the create-admin command."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ragstream import cli
from tests import raw
from tests.conftest import argon2_environment, make_settings
from tests.support import PASSWORD, Account, LiveServer, running_server

USERS = """query($first: Int, $after: String, $search: String) {
  users(first: $first, after: $after, search: $search) {
    totalCount
    edges { cursor node { id email displayName role isActive } }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}"""
USER = "query($id: ID!) { user(id: $id) { id email role isActive } }"
UPDATE_USER = """mutation($id: ID!, $input: UpdateUserInput!) {
  updateUser(id: $id, input: $input) { id role isActive displayName }
}"""
ME = "{ me { id role } }"
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken refreshToken user { id role } }
}"""
REFRESH = "mutation($t: String!) { refreshToken(refreshToken: $t) { accessToken } }"


async def admin(server: LiveServer) -> Account:
    account = await server.register(f"admin-{uuid.uuid4().hex[:8]}@example.com", name="Admin")
    await server.make_admin(account)
    return account


async def row(server: LiveServer, user_id: str) -> dict[str, Any]:
    async with server.state.sessionmaker() as session:
        result = await session.execute(
            text("SELECT email, display_name, role, is_active FROM users WHERE id = :id"),
            {"id": user_id},
        )
        return dict(result.mappings().one())


# --- users (admin list) ----------------------------------------------------------------------


async def test_users_requires_an_admin(server: LiveServer) -> None:
    account = await server.register()
    assert (await server.execute(USERS, token=account.access_token)).code == "FORBIDDEN"
    assert (await server.execute(USERS)).code == "UNAUTHENTICATED"


async def test_users_pages_through_everyone_in_creation_order(server: LiveServer) -> None:
    boss = await admin(server)
    others = [await server.register(f"member{i}@example.com") for i in range(4)]
    expected = [boss.id, *(a.id for a in others)]

    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        page = (
            await server.execute(USERS, {"first": 2, "after": after}, token=boss.access_token)
        ).ok()["users"]
        assert page["totalCount"] == 5
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        seen += [edge["node"]["id"] for edge in page["edges"]]
        assert page["pageInfo"]["endCursor"] == page["edges"][-1]["cursor"]
        assert page["pageInfo"]["startCursor"] == page["edges"][0]["cursor"]
        pages += 1
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == expected
    assert pages == 3


async def test_users_default_page_and_an_empty_page(server: LiveServer) -> None:
    boss = await admin(server)
    page = (await server.execute(USERS, token=boss.access_token)).ok()["users"]
    assert [e["node"]["id"] for e in page["edges"]] == [boss.id]
    empty = (await server.execute(USERS, {"first": 0}, token=boss.access_token)).ok()["users"]
    assert empty["edges"] == []
    assert empty["totalCount"] == 1
    assert empty["pageInfo"]["endCursor"] is None


async def test_users_search_matches_email_or_name_case_insensitively(server: LiveServer) -> None:
    boss = await admin(server)
    grace = await server.register("grace@navy.example", name="Grace Hopper")
    await server.register("alan@example.com", name="Alan Turing")
    await server.register("under_score@example.com", name="Percent 100%")

    async def search(term: str) -> tuple[int, list[str]]:
        page = (await server.execute(USERS, {"search": term}, token=boss.access_token)).ok()[
            "users"
        ]
        return page["totalCount"], [e["node"]["email"] for e in page["edges"]]

    assert await search("HOPPER") == (1, [grace.email])
    assert await search("navy") == (1, [grace.email])
    assert await search("  turing ") == (1, ["alan@example.com"])
    # LIKE wildcards are matched literally.
    assert await search("_") == (1, ["under_score@example.com"])
    assert await search("%") == (1, ["under_score@example.com"])
    assert await search("nobody-matches-this") == (0, [])
    total, _ = await search("")
    assert total == 4


async def test_users_first_over_100_or_negative_is_bad_input(server: LiveServer) -> None:
    boss = await admin(server)
    for first in (101, 100_000, -1):
        result = await server.execute(USERS, {"first": first}, token=boss.access_token)
        assert result.code == "BAD_USER_INPUT", first
        assert result.errors[0]["extensions"]["field"] == "first"
    (await server.execute(USERS, {"first": 100}, token=boss.access_token)).ok()


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage!",
        "bm90IGpzb24",  # "not json"
        _cursor({"a": 1}),
        _cursor([1]),
        _cursor(["not a date", "5f0c6f1e-4e8a-4c52-9d7e-3b8a2f1c9d40"]),
        _cursor(["2026-01-01T00:00:00+00:00", "not-a-uuid"]),
        _cursor([None, None]),
        _cursor([1, 2]),
        _cursor([["nested"], {"x": 1}]),
        "\ud800",
        "x" * 10_000,
    ],
)
async def test_users_bad_cursor_is_bad_input(server: LiveServer, cursor: str) -> None:
    boss = await admin(server)
    result = await raw.graphql(server, USERS, {"after": cursor}, token=boss.access_token)
    assert result.code == "BAD_USER_INPUT", result.errors
    assert result.errors[0]["extensions"]["field"] == "after"


async def test_users_search_with_unstorable_text_is_not_a_crash(server: LiveServer) -> None:
    boss = await admin(server)
    for term in ("nul\x00byte", "lone\ud800surrogate"):
        result = await raw.graphql(server, USERS, {"search": term}, token=boss.access_token)
        assert result.code == "BAD_USER_INPUT", (term, result.errors)
        assert result.errors[0]["extensions"]["field"] == "search"


# --- user(id) --------------------------------------------------------------------------------


async def test_user_by_id_is_yourself_or_anyone_for_an_admin(server: LiveServer) -> None:
    alice = await server.register()
    bob = await server.register()
    boss = await admin(server)
    own = (await server.execute(USER, {"id": alice.id}, token=alice.access_token)).ok()
    assert own["user"]["email"] == alice.email
    by_admin = (await server.execute(USER, {"id": alice.id}, token=boss.access_token)).ok()
    assert by_admin["user"]["id"] == alice.id

    missing = await server.execute(USER, {"id": str(uuid.uuid4())}, token=alice.access_token)
    someone_else = await server.execute(USER, {"id": bob.id}, token=alice.access_token)
    assert missing.code == someone_else.code == "NOT_FOUND"
    assert missing.errors[0]["message"] == someone_else.errors[0]["message"]


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1", "' OR 1=1 --"])
async def test_user_with_a_malformed_id_is_not_found(server: LiveServer, bad_id: str) -> None:
    boss = await admin(server)
    result = await raw.graphql(server, USER, {"id": bad_id}, token=boss.access_token)
    assert result.code == "NOT_FOUND"


# --- updateUser ------------------------------------------------------------------------------


async def test_non_admin_cannot_update_users(server: LiveServer) -> None:
    alice = await server.register()
    bob = await server.register()
    for target in (bob.id, alice.id):
        result = await server.execute(
            UPDATE_USER, {"id": target, "input": {"role": "ADMIN"}}, token=alice.access_token
        )
        assert result.code == "FORBIDDEN"
    assert (await row(server, alice.id))["role"] == "USER"
    assert (await row(server, bob.id))["role"] == "USER"


async def test_admin_updates_role_name_and_active_flag(server: LiveServer) -> None:
    boss = await admin(server)
    alice = await server.register()
    result = await server.execute(
        UPDATE_USER,
        {"id": alice.id, "input": {"role": "ADMIN", "displayName": "Alice  A."}},
        token=boss.access_token,
    )
    assert result.ok()["updateUser"] == {
        "id": alice.id,
        "role": "ADMIN",
        "isActive": True,
        "displayName": "Alice A.",
    }
    # Omitted fields stay as they are.
    result = await server.execute(
        UPDATE_USER, {"id": alice.id, "input": {}}, token=boss.access_token
    )
    assert result.ok()["updateUser"]["displayName"] == "Alice A."
    # The promotion applies to Alice's existing token at once.
    (await server.execute(USERS, token=alice.access_token)).ok()


async def test_update_user_errors(server: LiveServer) -> None:
    boss = await admin(server)
    alice = await server.register()
    missing = await server.execute(
        UPDATE_USER,
        {"id": str(uuid.uuid4()), "input": {"isActive": False}},
        token=boss.access_token,
    )
    assert missing.code == "NOT_FOUND"
    malformed = await server.execute(
        UPDATE_USER, {"id": "nope", "input": {"isActive": False}}, token=boss.access_token
    )
    assert malformed.code == "NOT_FOUND"
    bad_name = await server.execute(
        UPDATE_USER, {"id": alice.id, "input": {"displayName": ""}}, token=boss.access_token
    )
    assert bad_name.code == "BAD_USER_INPUT"
    assert bad_name.errors[0]["extensions"]["field"] == "displayName"
    bad_role = await server.execute(
        UPDATE_USER, {"id": alice.id, "input": {"role": "ROOT"}}, token=boss.access_token
    )
    assert bad_role.code == "BAD_USER_INPUT"
    assert await row(server, alice.id) == {
        "email": alice.email,
        "display_name": "Test User",
        "role": "USER",
        "is_active": True,
    }


async def test_deactivation_stops_the_users_live_tokens_at_once(server: LiveServer) -> None:
    boss = await admin(server)
    alice = await server.register()
    (await server.execute(ME, token=alice.access_token)).ok()

    deactivated = await server.execute(
        UPDATE_USER, {"id": alice.id, "input": {"isActive": False}}, token=boss.access_token
    )
    assert deactivated.ok()["updateUser"]["isActive"] is False

    assert (await server.execute(ME, token=alice.access_token)).code == "UNAUTHENTICATED"
    refresh = await server.execute(REFRESH, {"t": alice.refresh_token})
    assert refresh.code == "UNAUTHENTICATED"
    login = await server.execute(LOGIN, {"email": alice.email, "password": PASSWORD})
    assert login.code == "UNAUTHENTICATED"

    # Reactivation lets the account sign in again; the old sessions stay ended.
    (
        await server.execute(
            UPDATE_USER, {"id": alice.id, "input": {"isActive": True}}, token=boss.access_token
        )
    ).ok()
    (await server.execute(LOGIN, {"email": alice.email, "password": PASSWORD})).ok()
    assert (await server.execute(REFRESH, {"t": alice.refresh_token})).code == "UNAUTHENTICATED"


async def test_a_demoted_admin_loses_admin_rights_on_the_next_request(server: LiveServer) -> None:
    boss = await admin(server)
    deputy = await admin(server)
    (await server.execute(USERS, token=deputy.access_token)).ok()

    demoted = await server.execute(
        UPDATE_USER, {"id": deputy.id, "input": {"role": "USER"}}, token=boss.access_token
    )
    assert demoted.ok()["updateUser"]["role"] == "USER"

    assert (await server.execute(USERS, token=deputy.access_token)).code == "FORBIDDEN"
    result = await server.execute(
        UPDATE_USER, {"id": boss.id, "input": {"role": "USER"}}, token=deputy.access_token
    )
    assert result.code == "FORBIDDEN"
    # Still signed in as an ordinary user.
    assert (await server.execute(ME, token=deputy.access_token)).ok()["me"]["role"] == "USER"
    assert (await row(server, boss.id))["role"] == "ADMIN"


async def test_admins_cannot_demote_or_deactivate_themselves(server: LiveServer) -> None:
    boss = await admin(server)
    for change, field in (
        ({"role": "USER"}, "role"),
        ({"isActive": False}, "isActive"),
        ({"role": "USER", "isActive": False}, "role"),
    ):
        result = await server.execute(
            UPDATE_USER, {"id": boss.id, "input": change}, token=boss.access_token
        )
        assert result.code == "BAD_USER_INPUT", change
        assert result.errors[0]["extensions"]["field"] == field
    assert (await row(server, boss.id))["role"] == "ADMIN"
    assert (await row(server, boss.id))["is_active"] is True
    # Harmless changes to oneself are fine.
    result = await server.execute(
        UPDATE_USER,
        {"id": boss.id, "input": {"role": "ADMIN", "isActive": True, "displayName": "Boss"}},
        token=boss.access_token,
    )
    assert result.ok()["updateUser"]["displayName"] == "Boss"


# --- persistence and the create-admin command -------------------------------------------------


async def test_users_survive_a_server_restart(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path)
    async with running_server(settings) as first:
        account = await first.register("persist@example.com")
    async with running_server(make_settings(database_url, tmp_path)) as second:
        login = await second.execute(LOGIN, {"email": account.email, "password": PASSWORD})
        assert login.ok()["login"]["user"]["id"] == account.id
        # Tokens issued before the restart still work (same secret, same database).
        (await second.execute(ME, token=account.access_token)).ok()
        (await second.execute(REFRESH, {"t": account.refresh_token})).ok()


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "cli-data"
    monkeypatch.setenv("RAGSTREAM_DATABASE_URL", database_url)
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RAGSTREAM_JWT_SECRET", "cli-secret-" + "y" * 40)
    for name, value in argon2_environment().items():
        monkeypatch.setenv(name, value)
    return data_dir


async def test_create_admin_creates_then_promotes(
    cli_env: Path, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    password = "an admin passphrase"
    code = await asyncio.to_thread(
        cli.main, ["create-admin", "--email", "Root@Example.com", "--password", password]
    )
    assert code == 0
    assert "created admin root@example.com" in capsys.readouterr().out

    async with running_server(make_settings(database_url, tmp_path)) as server:
        login = await server.execute(LOGIN, {"email": "root@example.com", "password": password})
        root = login.ok()["login"]
        assert root["user"]["role"] == "ADMIN"
        (await server.execute(USERS, token=root["accessToken"])).ok()
        member = await server.register("member@example.com")

    code = await asyncio.to_thread(
        cli.main, ["create-admin", "--email", "MEMBER@example.com", "--password", password]
    )
    assert code == 0
    assert "promoted member@example.com" in capsys.readouterr().out

    async with running_server(make_settings(database_url, tmp_path)) as server:
        login = await server.execute(LOGIN, {"email": member.email, "password": password})
        assert login.ok()["login"]["user"]["role"] == "ADMIN"
        # Promotion also set the given password; the old one no longer works.
        old = await server.execute(LOGIN, {"email": member.email, "password": PASSWORD})
        assert old.code == "UNAUTHENTICATED"
        token = login.ok()["login"]["accessToken"]
        total = (await server.execute(USERS, token=token)).ok()
        assert total["users"]["totalCount"] == 2


async def test_create_admin_refuses_bad_input_with_a_clear_message(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.to_thread(
        cli.main, ["create-admin", "--email", "not-an-email", "--password", "long enough pw"]
    )
    assert code != 0
    assert "email address is not valid" in capsys.readouterr().err
    code = await asyncio.to_thread(
        cli.main, ["create-admin", "--email", "a@example.com", "--password", "short"]
    )
    assert code != 0
    assert "password must be" in capsys.readouterr().err


async def test_create_admin_prompts_for_the_password(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["prompted passphrase", "prompted passphrase"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code = await asyncio.to_thread(cli.main, ["create-admin", "--email", "p@example.com"])
    assert code == 0
    assert "created admin p@example.com" in capsys.readouterr().out

    mismatch = iter(["one passphrase!", "another passphrase"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(mismatch))
    code = await asyncio.to_thread(cli.main, ["create-admin", "--email", "q@example.com"])
    assert code == 1
    assert "do not match" in capsys.readouterr().err


async def test_create_admin_without_a_password_only_promotes_an_existing_account(
    cli_env: Path,
    database_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # given an account an admin has deactivated
    async with running_server(make_settings(database_url, tmp_path)) as server:
        member = await server.register("keep@example.com")
        boss = await server.register("boss@example.com")
        await server.make_admin(boss)
        deactivate = {"id": member.id, "input": {"isActive": False}}
        (await server.execute(UPDATE_USER, deactivate, token=boss.access_token)).ok()

    # when create-admin names it without --password
    def no_prompt(prompt: str = "") -> str:
        raise AssertionError("an existing account must not be asked for a password")

    monkeypatch.setattr("getpass.getpass", no_prompt)
    code = await asyncio.to_thread(cli.main, ["create-admin", "--email", "KEEP@example.com"])

    # then it is an admin, keeps its password, and stays deactivated
    assert code == 0
    out = capsys.readouterr().out
    assert "promoted keep@example.com to admin, password unchanged" in out
    assert "stays deactivated" in out
    async with running_server(make_settings(database_url, tmp_path)) as server:
        inactive = await server.execute(LOGIN, {"email": member.email, "password": PASSWORD})
        assert inactive.code == "UNAUTHENTICATED"
        reactivate = {"id": member.id, "input": {"isActive": True}}
        (await server.execute(UPDATE_USER, reactivate, token=boss.access_token)).ok()
        login = await server.execute(LOGIN, {"email": member.email, "password": PASSWORD})
        assert login.ok()["login"]["user"]["role"] == "ADMIN"
