"""Access tokens (JWT) and refresh-token rotation, attacked from outside over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from jwt.warnings import InsecureKeyLengthWarning
from sqlalchemy import text

from tests import raw
from tests.conftest import TEST_JWT_SECRET
from tests.support import PASSWORD, Account, LiveServer

ME = "{ me { id } }"
LOGIN = """mutation($email: String!, $password: String!) {
  login(email: $email, password: $password) { accessToken refreshToken }
}"""
REFRESH = """mutation($t: String!) {
  refreshToken(refreshToken: $t) { accessToken refreshToken expiresIn user { id } }
}"""
SECRET = TEST_JWT_SECRET.encode()


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def session_of(token: str) -> str:
    """The sign-in session (refresh-token family) an access token belongs to."""
    return str(jwt.decode(token, options={"verify_signature": False})["sid"])


def claims_of(account: Account, **changes: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": account.id,
        "sid": session_of(account.access_token),
        "typ": "access",
        "iat": now,
        "exp": now + timedelta(minutes=5),
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def sign(claims: dict[str, Any], key: bytes, algorithm: str = "HS256") -> str:
    with warnings.catch_warnings():
        # HS384/HS512 would like longer keys; the server must refuse these tokens anyway.
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return jwt.encode(claims, key, algorithm=algorithm)


def forged_tokens(account: Account) -> dict[str, str]:
    """Tokens that must all be refused, keyed by what is wrong with them."""
    good = account.access_token
    header, payload, signature = good.split(".")
    other_user = claims_of(account, sub=str(uuid.uuid4()))
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    past = datetime.now(UTC) - timedelta(minutes=1)
    unsigned = b64(claims_of(account, iat=1, exp=2**31))
    tampered = jwt.decode(good, options={"verify_signature": False}) | {"sub": other_user["sub"]}
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{unsigned}.",
        "alg none with signature": f"{b64({'alg': 'none'})}.{payload}.{signature}",
        "HS512 with the right key": sign(claims_of(account), SECRET, "HS512"),
        "HS384 with the right key": sign(claims_of(account), SECRET, "HS384"),
        "tampered payload": f"{header}.{b64(tampered)}.{signature}",
        "tampered signature": f"{header}.{payload}.{flipped}",
        "signature removed": f"{header}.{payload}.",
        "wrong key": jwt.encode(claims_of(account), b"k" * 48, algorithm="HS256"),
        "expired": jwt.encode(
            claims_of(account, exp=past, iat=past - timedelta(minutes=15)), SECRET
        ),
        "missing exp": jwt.encode(claims_of(account, exp=None), SECRET),
        "missing iat": jwt.encode(claims_of(account, iat=None), SECRET),
        "missing sub": jwt.encode(claims_of(account, sub=None), SECRET),
        "sub not a uuid": jwt.encode(claims_of(account, sub="admin"), SECRET),
        "sub of nobody": jwt.encode(claims_of(account, sub=str(uuid.uuid4())), SECRET),
        "missing sid": jwt.encode(claims_of(account, sid=None), SECRET),
        "sid not a uuid": jwt.encode(claims_of(account, sid="session"), SECRET),
        "sid of no session": jwt.encode(claims_of(account, sid=str(uuid.uuid4())), SECRET),
        "missing type": jwt.encode(claims_of(account, typ=None), SECRET),
        "refresh type": jwt.encode(claims_of(account, typ="refresh"), SECRET),
        "non-numeric exp": jwt.encode(claims_of(account, exp="tomorrow"), SECRET),
        "unknown crit header": jwt.encode(
            claims_of(account), SECRET, headers={"crit": ["urn:example:policy"]}
        ),
        "malformed crit header": jwt.encode(claims_of(account), SECRET, headers={"crit": "exp"}),
        "refresh token as access token": account.refresh_token,
        "garbage": "garbage",
        "three dots of garbage": "a.b.c",
        "not base64": "%%%.%%%.%%%",
        "10 KB token": "a" * 10_240,
        "10 KB jwt": jwt.encode(claims_of(account, pad="x" * 10_240), SECRET),
    }


async def test_a_valid_token_works(server: LiveServer) -> None:
    account = await server.register()
    assert (await server.execute(ME, token=account.access_token)).ok()["me"]["id"] == account.id
    # The test's own token factory is sound, so the refusals below are about the defect named.
    crafted = jwt.encode(claims_of(account), SECRET, algorithm="HS256")
    assert (await server.execute(ME, token=crafted)).ok()["me"]["id"] == account.id


async def test_a_token_that_worked_is_refused_once_it_expires(server: LiveServer) -> None:
    account = await server.register()
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    token = jwt.encode(claims_of(account, exp=expires), SECRET, algorithm="HS256")
    assert (await server.execute(ME, token=token)).ok()["me"]["id"] == account.id
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.1)
    result = await raw.graphql(server, ME, token=token)
    assert result.code == "UNAUTHENTICATED"
    assert result.data is None


async def test_no_token_is_unauthenticated(server: LiveServer) -> None:
    result = await server.execute(ME)
    assert result.code == "UNAUTHENTICATED"
    assert result.data is None


async def test_every_forged_or_broken_token_is_unauthenticated(server: LiveServer) -> None:
    account = await server.register()
    for defect, token in forged_tokens(account).items():
        result = await raw.graphql(server, ME, token=token)
        assert result.code == "UNAUTHENTICATED", (defect, result.errors)
        assert result.data is None, defect


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Basic dXNlcjpwYXNz", "bearer garbage", "Token abc", "Bearer a b c"],
)
async def test_malformed_authorization_headers_are_unauthenticated(
    server: LiveServer, header: str
) -> None:
    result = await raw.graphql(server, ME, headers={"authorization": header})
    assert result.code == "UNAUTHENTICATED"


async def test_a_bad_token_does_not_block_public_operations(server: LiveServer) -> None:
    account = await server.register()
    result = await server.execute(
        LOGIN, {"email": account.email, "password": PASSWORD}, token="garbage"
    )
    assert result.ok()["login"]["accessToken"]


async def test_refresh_rotation_works_once_per_token(server: LiveServer) -> None:
    account = await server.register()
    first = (await server.execute(REFRESH, {"t": account.refresh_token})).ok()["refreshToken"]
    assert first["refreshToken"] != account.refresh_token
    assert first["user"]["id"] == account.id
    assert first["expiresIn"] == server.state.settings.access_token_ttl_seconds
    me = await server.execute(ME, token=first["accessToken"])
    assert me.ok()["me"]["id"] == account.id
    second = (await server.execute(REFRESH, {"t": first["refreshToken"]})).ok()["refreshToken"]
    assert second["refreshToken"] not in (first["refreshToken"], account.refresh_token)


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(server: LiveServer) -> None:
    account = await server.register()
    other_session = (
        await server.execute(LOGIN, {"email": account.email, "password": PASSWORD})
    ).ok()["login"]
    rotated = (await server.execute(REFRESH, {"t": account.refresh_token})).ok()["refreshToken"]
    newest = (await server.execute(REFRESH, {"t": rotated["refreshToken"]})).ok()["refreshToken"]
    assert (await server.execute(ME, token=newest["accessToken"])).ok()["me"]["id"] == account.id

    reused = await server.execute(REFRESH, {"t": account.refresh_token})
    assert reused.code == "UNAUTHENTICATED"
    assert reused.data is None

    # The thief's (or the victim's) newest token of that family is dead too ...
    assert (await server.execute(REFRESH, {"t": newest["refreshToken"]})).code == (
        "UNAUTHENTICATED"
    )
    # ... and so is every access token of the family, at once rather than when it expires ...
    for token in (account.access_token, rotated["accessToken"], newest["accessToken"]):
        refused = await server.execute(ME, token=token)
        assert refused.code == "UNAUTHENTICATED"
        assert refused.data is None
    # ... while another sign-in of the same account is untouched.
    (await server.execute(REFRESH, {"t": other_session["refreshToken"]})).ok()
    me = await server.execute(ME, token=other_session["accessToken"])
    assert me.ok()["me"]["id"] == account.id


async def test_concurrent_use_of_one_refresh_token_succeeds_once(server: LiveServer) -> None:
    account = await server.register()
    results = await asyncio.gather(
        *(server.execute(REFRESH, {"t": account.refresh_token}) for _ in range(3))
    )
    winners = [r for r in results if not r.errors]
    assert len(winners) == 1
    assert [r.code for r in results if r.errors] == ["UNAUTHENTICATED"] * 2
    # A race is a reuse: the family is revoked, the winner's new token included.
    winner_token = winners[0].ok()["refreshToken"]["refreshToken"]
    assert (await server.execute(REFRESH, {"t": winner_token})).code == "UNAUTHENTICATED"


async def test_access_token_is_not_a_refresh_token(server: LiveServer) -> None:
    account = await server.register()
    result = await server.execute(REFRESH, {"t": account.access_token})
    assert result.code == "UNAUTHENTICATED"
    # The real refresh token was not affected by the attempt.
    (await server.execute(REFRESH, {"t": account.refresh_token})).ok()


@pytest.mark.parametrize("token", ["", "garbage", "x" * 10_240])
async def test_garbage_refresh_tokens_are_unauthenticated(server: LiveServer, token: str) -> None:
    result = await raw.graphql(server, REFRESH, {"t": token})
    assert result.code == "UNAUTHENTICATED"
    logout = await raw.graphql(
        server, "mutation($t: String!) { logout(refreshToken: $t) }", {"t": token}
    )
    assert logout.ok()["logout"] is True


@pytest.mark.parametrize("token", ["bad\ud800token", "nul\x00"])
async def test_unstorable_refresh_tokens_are_refused_at_the_edge(
    server: LiveServer, token: str
) -> None:
    account = await server.register()
    for operation in (REFRESH, "mutation($t: String!) { logout(refreshToken: $t) }"):
        result = await raw.graphql(server, operation, {"t": token})
        assert result.code == "BAD_USER_INPUT"
        assert result.errors[0]["extensions"]["field"] == "t"
    # The account's own session is untouched.
    (await server.execute(REFRESH, {"t": account.refresh_token})).ok()


async def test_expired_refresh_token_is_unauthenticated(server: LiveServer) -> None:
    account = await server.register()
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE refresh_tokens SET expires_at = now() - interval '1 second'")
        )
    result = await server.execute(REFRESH, {"t": account.refresh_token})
    assert result.code == "UNAUTHENTICATED"


async def test_refresh_for_a_deactivated_account_is_unauthenticated(server: LiveServer) -> None:
    account = await server.register()
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE users SET is_active = false WHERE id = :id"), {"id": account.id}
        )
    result = await server.execute(REFRESH, {"t": account.refresh_token})
    assert result.code == "UNAUTHENTICATED"


async def test_refresh_tokens_are_stored_only_as_digests(server: LiveServer) -> None:
    account = await server.register()
    async with server.state.sessionmaker() as session:
        stored = list(await session.scalars(text("SELECT token_hash FROM refresh_tokens")))
    assert stored
    assert account.refresh_token not in stored
    assert all(len(h) == 64 for h in stored)
