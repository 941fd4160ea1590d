"""Feature flags over GraphQL: what applies to the viewer, precedence, validation, the audit
trail and admin-only management."""

from __future__ import annotations

import asyncio
from typing import Any

from gql import GraphQLRequest

from tests.flags_support import (
    CHANGES,
    DELETE_FLAG,
    FEATURES,
    FLAGS,
    USAGE_REPORT,
    features,
    flag_rows,
    new_admin,
    set_flag,
    set_flag_ok,
)
from tests.support import LiveServer

DEFAULT_CHAT = {
    "dailyLimit": 200,
    "maxConcurrent": 3,
    "model": "extractive",
    "maxAnswerTokens": 1024,
}


async def test_without_flags_every_feature_is_the_configured_default(server: LiveServer) -> None:
    user = await server.register()
    admin = await new_admin(server)

    mine = await features(server, user)
    admins = await features(server, admin)

    assert list(mine) == ["chat", "uploads", "search"]
    assert mine["chat"] == {
        "key": "chat",
        "enabled": True,
        "metadata": DEFAULT_CHAT,
        "source": "DEFAULT",
    }
    assert mine["uploads"]["metadata"] == {
        "maxBytes": 20 * 1024 * 1024,
        "types": ["text/plain", "text/markdown", "text/html", "application/pdf"],
    }
    assert mine["search"] == {"key": "search", "enabled": True, "metadata": {}, "source": "DEFAULT"}
    # Admins have no daily limit by default: a default, not an exemption.
    assert admins["chat"]["metadata"] == {**DEFAULT_CHAT, "dailyLimit": None}
    assert admins["chat"]["source"] == "DEFAULT"


async def test_the_most_specific_scope_decides(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    other = await server.register()

    global_flag = await set_flag_ok(
        server, admin, key="chat", scope="GLOBAL", enabled=False, metadata={"model": "m-global"}
    )
    after_global = await features(server, user)
    role_flag = await set_flag_ok(
        server,
        admin,
        key="chat",
        scope="ROLE",
        role="USER",
        enabled=True,
        metadata={"dailyLimit": 7},
    )
    after_role = await features(server, user)
    user_flag = await set_flag_ok(
        server,
        admin,
        key="chat",
        scope="USER",
        userId=user.id,
        enabled=False,
        metadata={"maxConcurrent": 1},
    )
    after_user = await features(server, user)
    others = await features(server, other)
    admins = await features(server, admin)

    assert after_global["chat"]["enabled"] is False
    assert after_global["chat"]["source"] == "GLOBAL"
    assert after_global["chat"]["metadata"]["model"] == "m-global"
    assert after_role["chat"]["enabled"] is True
    assert after_role["chat"]["source"] == "ROLE"
    # Each metadata field comes from the most specific flag that sets it.
    assert after_role["chat"]["metadata"] == {**DEFAULT_CHAT, "model": "m-global", "dailyLimit": 7}
    assert after_user["chat"]["enabled"] is False
    assert after_user["chat"]["source"] == "USER"
    assert after_user["chat"]["metadata"] == {
        **DEFAULT_CHAT,
        "model": "m-global",
        "dailyLimit": 7,
        "maxConcurrent": 1,
    }
    assert others["chat"]["source"] == "ROLE"
    assert others["chat"]["enabled"] is True
    # The ADMIN role has no flag: the global one decides for admins.
    assert admins["chat"]["source"] == "GLOBAL"
    assert admins["chat"]["enabled"] is False
    assert admins["chat"]["metadata"]["dailyLimit"] is None
    # Features nobody flagged keep their defaults.
    assert after_user["uploads"]["source"] == "DEFAULT"

    for flag, expected in ((user_flag, "ROLE"), (role_flag, "GLOBAL"), (global_flag, "DEFAULT")):
        (await server.execute(DELETE_FLAG, {"id": flag["id"]}, token=admin.access_token)).ok()
        assert (await features(server, user))["chat"]["source"] == expected
    assert (await features(server, user))["chat"]["metadata"] == DEFAULT_CHAT


async def test_setting_a_flag_again_replaces_it(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    first = await set_flag_ok(
        server,
        admin,
        key="uploads",
        scope="USER",
        userId=user.id,
        enabled=True,
        metadata={"maxBytes": 1000, "types": ["text/plain"]},
    )

    second = await set_flag_ok(
        server, admin, key="uploads", scope="USER", userId=user.id, enabled=False
    )

    assert second["id"] == first["id"]
    assert second["enabled"] is False
    assert second["metadata"] == {}
    assert second["updatedBy"] == {"id": admin.id}
    listed = (await server.execute(FLAGS, token=admin.access_token)).ok()["featureFlags"]
    assert listed["totalCount"] == 1
    uploads = (await features(server, user))["uploads"]
    assert uploads["enabled"] is False
    assert uploads["metadata"]["maxBytes"] == 20 * 1024 * 1024


async def test_every_change_is_in_the_audit_trail(server: LiveServer) -> None:
    admin = await new_admin(server)
    flag = await set_flag_ok(server, admin, key="search", scope="ROLE", role="USER", enabled=False)
    await set_flag_ok(server, admin, key="search", scope="ROLE", role="USER", enabled=False)
    await set_flag_ok(server, admin, key="search", scope="ROLE", role="USER", enabled=True)
    (await server.execute(DELETE_FLAG, {"id": flag["id"]}, token=admin.access_token)).ok()

    trail = (await server.execute(CHANGES, {"flagId": flag["id"]}, token=admin.access_token)).ok()[
        "featureFlagChanges"
    ]

    changes = [edge["node"] for edge in trail["edges"]]
    # Newest first; setting the state it already had recorded nothing.
    assert trail["totalCount"] == 3
    assert [c["action"] for c in changes] == ["DELETED", "UPDATED", "CREATED"]
    assert [(c["before"], c["after"]) for c in changes] == [
        ({"enabled": True, "metadata": {}}, None),
        ({"enabled": False, "metadata": {}}, {"enabled": True, "metadata": {}}),
        (None, {"enabled": False, "metadata": {}}),
    ]
    for change in changes:
        assert change["actor"] == {"id": admin.id, "email": admin.email}
        assert change["actorId"] == admin.id
        assert (change["flagId"], change["key"], change["scope"], change["role"]) == (
            flag["id"],
            "search",
            "ROLE",
            "USER",
        )
    assert changes[0]["changedAt"] > changes[1]["changedAt"] > changes[2]["changedAt"]
    assert (await server.execute(FLAGS, token=admin.access_token)).ok()["featureFlags"][
        "totalCount"
    ] == 0


async def _refused(server: LiveServer, token: str, query: str, variables: dict[str, Any]) -> str:
    result = await server.execute(query, variables, token=token)
    assert result.data is None or all(v is None for v in result.data.values()), result.data
    return result.code


async def test_only_admins_manage_flags_and_read_reports(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    flag = await set_flag_ok(server, admin, key="chat", scope="GLOBAL", enabled=True)
    before = await flag_rows(server)
    token = user.access_token

    codes = [
        await _refused(server, token, FLAGS, {}),
        await _refused(server, token, CHANGES, {}),
        await _refused(
            server,
            token,
            USAGE_REPORT,
            {"from": "2026-01-01", "to": "2026-01-02", "groupBy": "DAY"},
        ),
        await _refused(
            server,
            token,
            "mutation($input: SetFeatureFlagInput!) { setFeatureFlag(input: $input) { id } }",
            {
                "input": {
                    "key": "chat",
                    "scope": "USER",
                    "userId": user.id,
                    "enabled": True,
                    "metadata": {"dailyLimit": 100000},
                }
            },
        ),
        await _refused(server, token, DELETE_FLAG, {"id": flag["id"]}),
        await _refused(
            server, token, "query($id: ID!) { featureFlag(id: $id) { id } }", {"id": flag["id"]}
        ),
    ]

    assert codes == ["FORBIDDEN"] * 6
    assert await flag_rows(server) == before
    # An account can read its own features, never another's.
    other = await server.execute(
        "query($id: ID!) { user(id: $id) { features { key } } }", {"id": admin.id}, token=token
    )
    assert other.code == "NOT_FOUND"


async def test_anonymous_callers_are_unauthenticated(server: LiveServer) -> None:
    result = await server.execute(FEATURES)
    flags = await server.execute(FLAGS)

    assert result.code == "UNAUTHENTICATED"
    assert flags.code == "UNAUTHENTICATED"


async def test_an_admin_reads_another_accounts_features(server: LiveServer) -> None:
    admin = await new_admin(server)
    users = [await server.register() for _ in range(3)]
    await set_flag_ok(server, admin, key="search", scope="USER", userId=users[1].id, enabled=False)

    data = (
        await server.execute(
            "{ users(first: 10) { edges { node { id features { key enabled source } } } } }",
            token=admin.access_token,
        )
    ).ok()

    by_id = {
        e["node"]["id"]: {f["key"]: f for f in e["node"]["features"]}
        for e in data["users"]["edges"]
    }
    assert by_id[users[1].id]["search"] == {"key": "search", "enabled": False, "source": "USER"}
    assert by_id[users[0].id]["search"]["source"] == "DEFAULT"
    assert by_id[admin.id]["search"]["enabled"] is True


async def test_flag_management_validates_its_input(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    await set_flag_ok(server, admin, key="chat", scope="GLOBAL", enabled=True)
    before = await flag_rows(server)
    missing = "00000000-0000-0000-0000-000000000001"

    cases: list[tuple[dict[str, Any], str, str | None]] = [
        ({"key": "chta", "scope": "GLOBAL", "enabled": True}, "BAD_USER_INPUT", "key"),
        (
            {"key": "chat", "scope": "GLOBAL", "enabled": True, "metadata": [1]},
            "BAD_USER_INPUT",
            "metadata",
        ),
        (
            {"key": "chat", "scope": "GLOBAL", "enabled": True, "metadata": {"dailyLimt": 3}},
            "BAD_USER_INPUT",
            "metadata.dailyLimt",
        ),
        (
            {"key": "chat", "scope": "GLOBAL", "enabled": True, "metadata": {"dailyLimit": -1}},
            "BAD_USER_INPUT",
            "metadata.dailyLimit",
        ),
        (
            {"key": "chat", "scope": "GLOBAL", "enabled": True, "metadata": {"dailyLimit": "9"}},
            "BAD_USER_INPUT",
            "metadata.dailyLimit",
        ),
        (
            {
                "key": "chat",
                "scope": "GLOBAL",
                "enabled": True,
                "metadata": {"maxConcurrent": True},
            },
            "BAD_USER_INPUT",
            "metadata.maxConcurrent",
        ),
        (
            {"key": "chat", "scope": "GLOBAL", "enabled": True, "metadata": {"model": " "}},
            "BAD_USER_INPUT",
            "metadata.model",
        ),
        (
            {"key": "chat", "scope": "GLOBAL", "enabled": True, "metadata": {"maxAnswerTokens": 0}},
            "BAD_USER_INPUT",
            "metadata.maxAnswerTokens",
        ),
        (
            {
                "key": "uploads",
                "scope": "GLOBAL",
                "enabled": True,
                "metadata": {"maxBytes": 20 * 1024 * 1024 + 1},
            },
            "BAD_USER_INPUT",
            "metadata.maxBytes",
        ),
        (
            {
                "key": "uploads",
                "scope": "GLOBAL",
                "enabled": True,
                "metadata": {"types": ["image/png"]},
            },
            "BAD_USER_INPUT",
            "metadata.types",
        ),
        (
            {"key": "search", "scope": "GLOBAL", "enabled": True, "metadata": {"limit": 3}},
            "BAD_USER_INPUT",
            "metadata.limit",
        ),
        ({"key": "chat", "scope": "USER", "enabled": True}, "BAD_USER_INPUT", "userId"),
        (
            {"key": "chat", "scope": "GLOBAL", "userId": user.id, "enabled": True},
            "BAD_USER_INPUT",
            "userId",
        ),
        (
            {
                "key": "chat",
                "scope": "ROLE",
                "role": "USER",
                "evaluationId": missing,
                "enabled": True,
            },
            "BAD_USER_INPUT",
            "evaluationId",
        ),
        ({"key": "chat", "scope": "ROLE", "enabled": True}, "BAD_USER_INPUT", "role"),
        ({"key": "chat", "scope": "USER", "userId": missing, "enabled": True}, "NOT_FOUND", None),
        (
            {"key": "chat", "scope": "EVALUATION", "evaluationId": missing, "enabled": True},
            "NOT_FOUND",
            None,
        ),
    ]
    for flag, code, field in cases:
        result = await set_flag(server, admin, **flag)
        assert result.code == code, (flag, result.errors)
        assert result.errors[0]["extensions"].get("field") == field, (flag, result.errors)

    unknown = await server.execute(DELETE_FLAG, {"id": missing}, token=admin.access_token)
    assert unknown.code == "NOT_FOUND"
    assert await flag_rows(server) == before


async def test_flags_page_through_a_filtered_connection(server: LiveServer) -> None:
    admin = await new_admin(server)
    users = [await server.register() for _ in range(3)]
    for user in users:
        await set_flag_ok(server, admin, key="chat", scope="USER", userId=user.id, enabled=True)
    await set_flag_ok(server, admin, key="search", scope="GLOBAL", enabled=True)

    first = (
        await server.execute(
            FLAGS, {"filter": {"key": "chat"}, "first": 2}, token=admin.access_token
        )
    ).ok()["featureFlags"]
    rest = (
        await server.execute(
            FLAGS,
            {"filter": {"key": "chat"}, "first": 2, "after": first["pageInfo"]["endCursor"]},
            token=admin.access_token,
        )
    ).ok()["featureFlags"]
    one = (
        await server.execute(FLAGS, {"filter": {"userId": users[2].id}}, token=admin.access_token)
    ).ok()["featureFlags"]
    bad = await server.execute(FLAGS, {"filter": {"key": "nope"}}, token=admin.access_token)

    assert first["totalCount"] == 3
    assert first["pageInfo"]["hasNextPage"] is True
    assert rest["pageInfo"]["hasNextPage"] is False
    ids = [e["node"]["userId"] for e in first["edges"] + rest["edges"]]
    assert sorted(ids) == sorted(u.id for u in users)
    assert [e["node"]["userId"] for e in one["edges"]] == [users[2].id]
    assert bad.code == "BAD_USER_INPUT"
    assert bad.errors[0]["extensions"]["field"] == "key"


async def test_a_change_applies_to_the_next_websocket_operation(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()

    async with asyncio.timeout(30), server.websocket(user.access_token) as session:
        before = await session.execute(GraphQLRequest(FEATURES))
        await set_flag_ok(server, admin, key="chat", scope="USER", userId=user.id, enabled=False)
        after = await session.execute(GraphQLRequest(FEATURES))

    chat_before = next(f for f in before["me"]["features"] if f["key"] == "chat")
    chat_after = next(f for f in after["me"]["features"] if f["key"] == "chat")
    assert (chat_before["enabled"], chat_before["source"]) == (True, "DEFAULT")
    assert (chat_after["enabled"], chat_after["source"]) == (False, "USER")


async def test_flags_of_another_environment_do_not_apply(server: LiveServer) -> None:
    from sqlalchemy import text

    user = await server.register()
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text(
                "INSERT INTO feature_flags (environment, key, scope, enabled) "
                "VALUES ('production', 'chat', 'GLOBAL', false)"
            )
        )

    chat = (await features(server, user))["chat"]

    assert server.state.settings.environment == "development"
    assert (chat["enabled"], chat["source"]) == (True, "DEFAULT")
