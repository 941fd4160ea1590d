"""Sign-up, sign-in, sessions and passwords, over HTTP against a live server."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from sqlalchemy import text

from tests import raw
from tests.conftest import make_settings
from tests.support import PASSWORD, LiveServer, Result, running_server

REGISTER = """mutation($input: RegisterInput!) {
  register(input: $input) { accessToken refreshToken tokenType expiresIn user { id email role } }
}"""
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken refreshToken user { id email } }
}"""
REFRESH = """mutation($t: String!) {
  refreshToken(refreshToken: $t) { accessToken refreshToken }
}"""
LOGOUT = "mutation($t: String!) { logout(refreshToken: $t) }"
CHANGE_PASSWORD = """mutation($current: String!, $new: String!) {
  changePassword(currentPassword: $current, newPassword: $new)
}"""
ME = "{ me { id email displayName role isActive createdAt } }"


async def register(server: LiveServer, email: str, password: str, name: str = "N") -> Result:
    # Plain JSON with ASCII escapes: some cases carry text with no UTF-8 form.
    return await raw.graphql(
        server, REGISTER, {"input": {"email": email, "password": password, "displayName": name}}
    )


async def login(
    server: LiveServer, email: str, password: str = PASSWORD, *, client_address: str | None = None
) -> Result:
    return await raw.graphql(
        server, LOGIN, {"email": email, "password": password}, client_address=client_address
    )


async def user_count(server: LiveServer) -> int:
    async with server.state.sessionmaker() as session:
        return int(await session.scalar(text("SELECT count(*) FROM users")) or 0)


async def stored_hash(server: LiveServer, email: str) -> str:
    async with server.state.sessionmaker() as session:
        value = await session.scalar(
            text("SELECT password_hash FROM users WHERE email = :e"), {"e": email}
        )
    assert isinstance(value, str)
    return value


async def set_hash(server: LiveServer, email: str, password_hash: str) -> None:
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE users SET password_hash = :h WHERE email = :e"),
            {"h": password_hash, "e": email},
        )


# --- register -> login -> me ---------------------------------------------------------------


async def test_register_login_me(server: LiveServer) -> None:
    registered = (await register(server, "Ada@Example.COM", PASSWORD, "Ada  Lovelace")).ok()
    payload = registered["register"]
    assert payload["tokenType"] == "Bearer"
    assert payload["expiresIn"] == server.state.settings.access_token_ttl_seconds
    assert payload["user"]["email"] == "ada@example.com"
    assert payload["user"]["role"] == "USER"

    logged_in = (await login(server, "ADA@example.com")).ok()["login"]
    assert logged_in["user"]["id"] == payload["user"]["id"]

    me = (await server.execute(ME, token=logged_in["accessToken"])).ok()["me"]
    assert me["id"] == payload["user"]["id"]
    assert me["email"] == "ada@example.com"
    assert me["displayName"] == "Ada Lovelace"
    assert me["isActive"] is True
    assert me["createdAt"].endswith("+00:00")


async def test_password_is_stored_as_argon2id(server: LiveServer) -> None:
    account = await server.register()
    assert (await stored_hash(server, account.email)).startswith("$argon2id$")


async def test_wrong_password_and_unknown_email_answer_identically(server: LiveServer) -> None:
    account = await server.register()
    wrong_password = await login(server, account.email, "not the password at all")
    unknown_email = await login(server, "nobody@example.com", "not the password at all")
    assert wrong_password.code == unknown_email.code == "UNAUTHENTICATED"
    assert wrong_password.errors[0]["message"] == unknown_email.errors[0]["message"]
    assert wrong_password.errors[0].get("extensions") == unknown_email.errors[0].get("extensions")
    assert wrong_password.data is None
    assert unknown_email.data is None


async def test_deactivated_account_cannot_log_in_and_answers_like_a_wrong_password(
    server: LiveServer,
) -> None:
    account = await server.register()
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE users SET is_active = false WHERE id = :id"), {"id": account.id}
        )
    deactivated = await login(server, account.email)
    unknown = await login(server, "nobody@example.com")
    assert deactivated.code == "UNAUTHENTICATED"
    assert deactivated.errors[0]["message"] == unknown.errors[0]["message"]


async def test_duplicate_email_in_any_case_conflicts(server: LiveServer) -> None:
    await server.register("dup@example.com")
    before = await user_count(server)
    result = await register(server, "DUP@Example.com", PASSWORD)
    assert result.code == "CONFLICT"
    assert result.errors[0]["extensions"]["field"] == "email"
    assert await user_count(server) == before


async def test_concurrent_duplicate_registrations_create_one_account(server: LiveServer) -> None:
    results = await asyncio.gather(
        *(
            register(server, f"race{'@EXAMPLE.com' if i % 2 else '@example.com'}", PASSWORD)
            for i in range(4)
        )
    )
    assert sum(1 for r in results if not r.errors) == 1
    assert sorted(r.code for r in results if r.errors) == ["CONFLICT"] * 3
    assert await user_count(server) == 1


async def test_register_validation_names_the_field(server: LiveServer) -> None:
    cases = [
        ({"email": "not-an-email", "password": PASSWORD}, "email"),
        ({"email": "a@b", "password": PASSWORD}, "email"),
        ({"email": "short@example.com", "password": "x" * 9}, "password"),
        ({"email": "long@example.com", "password": "x" * 257}, "password"),
        ({"email": "name@example.com", "password": PASSWORD, "displayName": "   "}, "displayName"),
        (
            {"email": "name@example.com", "password": PASSWORD, "displayName": "n" * 101},
            "displayName",
        ),
    ]
    for values, field in cases:
        result = await register(
            server, values["email"], values["password"], values.get("displayName", "N")
        )
        assert result.code == "BAD_USER_INPUT", (values, result.errors)
        assert result.errors[0]["extensions"]["field"] == field, (values, result.errors)
    assert await user_count(server) == 0


async def test_password_length_bounds_are_inclusive(server: LiveServer) -> None:
    (await register(server, "ten@example.com", "x" * 10)).ok()
    (await register(server, "max@example.com", "y" * 256)).ok()
    (await login(server, "max@example.com", "y" * 256)).ok()


async def test_unencodable_text_is_bad_input_not_a_crash(server: LiveServer) -> None:
    # JSON strings may carry lone surrogates (no UTF-8 form) and NUL (refused by PostgreSQL).
    lone_surrogate = "abcdefghij\ud800"
    result = await register(server, "s@example.com", lone_surrogate)
    assert result.code == "BAD_USER_INPUT"
    assert result.errors[0]["extensions"]["field"] == "password"
    for name in ("bad\ud800name", "nul\x00name"):
        result = await register(server, "s@example.com", PASSWORD, name)
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == "displayName"
    for email in ("s\ud800@example.com", "s\x00@example.com"):
        result = await register(server, email, PASSWORD)
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == "email"
    assert await user_count(server) == 0

    account = await server.register()
    unknown = await login(server, "nobody@example.com")
    for email, password, field in [
        (account.email, lone_surrogate, "password"),
        (account.email + "\x00", PASSWORD, "email"),
        ("x\ud800@example.com", PASSWORD, "email"),
    ]:
        # Refused before any account is looked up, the same for every address.
        result = await login(server, email, password)
        assert result.code == "BAD_USER_INPUT", (email, result.errors)
        assert result.errors[0]["extensions"]["field"] == field
    for email, password in [
        ("no-at-sign", PASSWORD),
        ("x" * 5000 + "@example.com", PASSWORD),
    ]:
        result = await login(server, email, password)
        assert result.code == "UNAUTHENTICATED", (email, result.errors)
        assert result.errors[0]["message"] == unknown.errors[0]["message"]


async def test_update_me_changes_only_the_display_name(server: LiveServer) -> None:
    account = await server.register(name="Before")
    query = "mutation($i: UpdateMeInput!) { updateMe(input: $i) { id displayName email role } }"
    changes = {"i": {"displayName": " After  Name "}}
    updated = (await server.execute(query, changes, token=account.access_token)).ok()["updateMe"]
    assert updated == {
        "id": account.id,
        "displayName": "After Name",
        "email": account.email,
        "role": "USER",
    }
    bad = await server.execute(query, {"i": {"displayName": ""}}, token=account.access_token)
    assert bad.code == "BAD_USER_INPUT"
    assert bad.errors[0]["extensions"]["field"] == "displayName"
    me = (await server.execute(ME, token=account.access_token)).ok()["me"]
    assert me["displayName"] == "After Name"
    anonymous = await server.execute(query, {"i": {"displayName": "X"}})
    assert anonymous.code == "UNAUTHENTICATED"


# --- sessions --------------------------------------------------------------------------------


async def test_logout_revokes_the_refresh_token(server: LiveServer) -> None:
    account = await server.register()
    assert (await server.execute(LOGOUT, {"t": account.refresh_token})).ok()["logout"] is True
    result = await server.execute(REFRESH, {"t": account.refresh_token})
    assert result.code == "UNAUTHENTICATED"


async def test_logout_with_an_unknown_token_reveals_nothing(server: LiveServer) -> None:
    assert (await server.execute(LOGOUT, {"t": "no-such-token"})).ok()["logout"] is True


async def test_logout_ends_only_that_session(server: LiveServer) -> None:
    account = await server.register()
    other = (await login(server, account.email)).ok()["login"]
    (await server.execute(LOGOUT, {"t": account.refresh_token})).ok()
    (await server.execute(REFRESH, {"t": other["refreshToken"]})).ok()


async def test_change_password_revokes_other_sessions_but_keeps_this_one(
    server: LiveServer,
) -> None:
    account = await server.register()
    other_session = (await login(server, account.email)).ok()["login"]
    new_password = "a brand new passphrase"

    changed = await server.execute(
        CHANGE_PASSWORD, {"current": PASSWORD, "new": new_password}, token=account.access_token
    )
    assert changed.ok()["changePassword"] is True

    # The session that changed the password keeps working ...
    rotated = (await server.execute(REFRESH, {"t": account.refresh_token})).ok()["refreshToken"]
    (await server.execute(REFRESH, {"t": rotated["refreshToken"]})).ok()
    # ... every other session is signed out.
    revoked = await server.execute(REFRESH, {"t": other_session["refreshToken"]})
    assert revoked.code == "UNAUTHENTICATED"
    # Only the new password signs in.
    assert (await login(server, account.email)).code == "UNAUTHENTICATED"
    (await login(server, account.email, new_password)).ok()


async def test_logout_stops_that_sessions_access_token_at_once(server: LiveServer) -> None:
    account = await server.register()
    other = (await login(server, account.email)).ok()["login"]
    assert (await server.execute(ME, token=account.access_token)).ok()["me"]["id"] == account.id

    (await server.execute(LOGOUT, {"t": account.refresh_token})).ok()

    refused = await server.execute(ME, token=account.access_token)
    assert refused.code == "UNAUTHENTICATED"
    assert refused.data is None
    assert (await server.execute(ME, token=other["accessToken"])).ok()["me"]["id"] == account.id


async def test_change_password_stops_other_sessions_access_tokens_at_once(
    server: LiveServer,
) -> None:
    account = await server.register()
    other_session = (await login(server, account.email)).ok()["login"]
    assert (await server.execute(ME, token=other_session["accessToken"])).ok()["me"]

    changed = await server.execute(
        CHANGE_PASSWORD,
        {"current": PASSWORD, "new": "a brand new passphrase"},
        token=account.access_token,
    )
    assert changed.ok()["changePassword"] is True

    refused = await server.execute("{ me { id } }", token=other_session["accessToken"])
    assert refused.code == "UNAUTHENTICATED"
    assert refused.data is None
    me = await server.execute("{ me { id } }", token=account.access_token)
    assert me.ok()["me"]["id"] == account.id


async def test_change_password_errors_change_nothing(server: LiveServer) -> None:
    account = await server.register()
    other_session = (await login(server, account.email)).ok()["login"]
    before = await stored_hash(server, account.email)

    wrong = await server.execute(
        CHANGE_PASSWORD,
        {"current": "not my password!", "new": "a brand new passphrase"},
        token=account.access_token,
    )
    assert wrong.code == "UNAUTHENTICATED"
    too_short = await server.execute(
        CHANGE_PASSWORD, {"current": PASSWORD, "new": "short"}, token=account.access_token
    )
    assert too_short.code == "BAD_USER_INPUT"
    assert too_short.errors[0]["extensions"]["field"] == "newPassword"
    anonymous = await server.execute(CHANGE_PASSWORD, {"current": PASSWORD, "new": "x" * 20})
    assert anonymous.code == "UNAUTHENTICATED"

    assert await stored_hash(server, account.email) == before
    (await server.execute(REFRESH, {"t": other_session["refreshToken"]})).ok()


# --- password hashes -------------------------------------------------------------------------


async def test_hash_with_old_parameters_is_rehashed_on_login(server: LiveServer) -> None:
    account = await server.register()
    weak = Argon2Hasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
    await set_hash(server, account.email, weak.hash(PASSWORD))

    (await login(server, account.email)).ok()

    settings = server.state.settings
    rehashed = await stored_hash(server, account.email)
    assert (
        f"$m={settings.argon2_memory_kib},t={settings.argon2_time_cost},"
        f"p={settings.argon2_parallelism}$" in rehashed
    )
    (await login(server, account.email)).ok()


async def test_failed_login_does_not_rehash(server: LiveServer) -> None:
    account = await server.register()
    weak_hash = Argon2Hasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID).hash(PASSWORD)
    await set_hash(server, account.email, weak_hash)
    assert (await login(server, account.email, "a wrong password")).code == "UNAUTHENTICATED"
    assert await stored_hash(server, account.email) == weak_hash


async def test_corrupt_stored_hash_is_an_ordinary_login_failure(server: LiveServer) -> None:
    account = await server.register()
    unknown = await login(server, "nobody@example.com")
    corrupt_hashes = [
        "",
        "not-a-hash",
        "$argon2id$v=19$m=garbage$salt$hash",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$!!!!",
        "$2b$12$abcdefghijklmnopqrstuuv0mUOnZ4YXrJ3ZlOa8yHZHbqX2j5K6",
        "$argon2id$v=19$m=19456,t=2,p=1$sälz$häsh",
    ]
    for corrupt in corrupt_hashes:
        await set_hash(server, account.email, corrupt)
        result = await login(server, account.email)
        assert result.code == "UNAUTHENTICATED", (corrupt, result.errors)
        assert result.errors[0]["message"] == unknown.errors[0]["message"]
        assert await stored_hash(server, account.email) == corrupt


# --- rate limits -----------------------------------------------------------------------------


def limited_server(
    database_url: str, tmp_path: Path, *, per_email: int, per_client: int
) -> AbstractAsyncContextManager[LiveServer]:
    """A server with its own sign-in limits per email and per client address."""
    settings = make_settings(
        database_url,
        tmp_path,
        login_attempts_per_minute=per_email,
        login_attempts_per_minute_per_client=per_client,
    )
    return running_server(settings)


async def test_login_flood_is_rate_limited(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, login_attempts_per_minute=3)
    async with running_server(settings) as server:
        account = await server.register()
        results = [await login(server, account.email, "wrong password!") for _ in range(3)]
        assert [r.code for r in results] == ["UNAUTHENTICATED"] * 3
        limited = await login(server, account.email)  # even the right password
        assert limited.code == "RATE_LIMITED"
        assert limited.errors[0]["extensions"]["retryAfterSeconds"] > 0
        # The process stays responsive while limiting.
        async with server.http_client() as client:
            assert (await client.get(f"{server.http_url}/healthz")).status_code == 200


async def test_many_login_aliases_in_one_request_are_rate_limited(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, login_attempts_per_minute=3)
    async with running_server(settings) as server:
        account = await server.register()
        aliases = " ".join(
            f'a{i}: login(email: "{account.email}", password: "{PASSWORD}") {{ accessToken }}'
            for i in range(10)
        )
        result = await server.execute(f"mutation {{ {aliases} }}")
        assert result.code == "RATE_LIMITED"
        assert result.data is None
        assert (await login(server, account.email)).code == "RATE_LIMITED"


async def test_a_failed_login_alias_stops_the_rest_of_the_mutation(
    database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url, tmp_path, login_attempts_per_minute=3)
    async with running_server(settings) as server:
        account = await server.register()
        aliases = " ".join(
            f'a{i}: login(email: "{account.email}", password: "guess-{i:06d}") {{ accessToken }}'
            for i in range(10)
        )
        result = await server.execute(f"mutation {{ {aliases} }}")
        # Mutation fields run in order and a failed non-null field ends the operation, so
        # the flood spent one attempt only.
        assert result.code == "UNAUTHENTICATED"
        (await login(server, account.email)).ok()
        (await login(server, account.email)).ok()


async def test_login_limit_ignores_email_case(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(database_url, tmp_path, login_attempts_per_minute=2)
    async with running_server(settings) as server:
        target = await server.register()
        for _ in range(2):
            await login(server, target.email, "wrong password!")
        assert (await login(server, target.email.upper())).code == "RATE_LIMITED"


async def test_unknown_account_logins_are_rate_limited_too(
    database_url: str, tmp_path: Path
) -> None:
    async with limited_server(database_url, tmp_path, per_email=2, per_client=2) as server:
        codes = [(await login(server, f"{uuid.uuid4().hex}@example.com")).code for _ in range(3)]
        assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED", "RATE_LIMITED"]


async def test_one_email_limit_does_not_lock_out_others_from_the_same_address(
    database_url: str, tmp_path: Path
) -> None:
    async with limited_server(database_url, tmp_path, per_email=1, per_client=10) as server:
        target, other = await server.register(), await server.register()
        assert (await login(server, target.email, "wrong password!")).code == "UNAUTHENTICATED"
        assert (await login(server, target.email)).code == "RATE_LIMITED"
        (await login(server, other.email)).ok()


async def test_a_blocked_client_does_not_spend_the_emails_budget(
    database_url: str, tmp_path: Path
) -> None:
    async with limited_server(database_url, tmp_path, per_email=3, per_client=2) as server:
        victim = await server.register()
        # An attacker on one address guesses until that address is blocked, and keeps going.
        guesses = [(await login(server, victim.email, "wrong password!")).code for _ in range(6)]
        assert guesses == ["UNAUTHENTICATED"] * 2 + ["RATE_LIMITED"] * 4
        # Only the two guesses that got through counted against the email: its owner, from
        # another address, still signs in.
        me = (await login(server, victim.email, client_address="127.0.0.2")).ok()["login"]
        assert me["user"]["id"] == victim.id
        # The email limit itself still holds: that was its third and last attempt.
        third = await login(server, victim.email, client_address="127.0.0.3")
        assert third.code == "RATE_LIMITED"
