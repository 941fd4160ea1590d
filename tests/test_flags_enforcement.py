"""Feature flags where the features live: chat, uploads and search, over HTTP and websockets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from gql import GraphQLRequest
from gql.transport.exceptions import TransportQueryError

from tests.chat_stub import CHAT_COMPLETIONS, ChatScript, ChatStub
from tests.chat_support import (
    CHAT,
    SEND,
    USAGE,
    chat_all,
    chat_server,
    count_rows,
    eventually,
    new_conversation,
    send,
    stored_message,
    subscription_error,
)
from tests.documents_support import SEARCH, create, upload
from tests.evaluations_support import create_evaluation
from tests.flags_support import USAGE_REPORT, new_admin, set_flag_ok
from tests.support import Account, LiveServer

SLOW = ChatScript(tokens=[f"t{i} " for i in range(2_000)], delay=0.02)


def next_utc_midnight() -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (today + timedelta(days=1)).isoformat()


def send_input(conversation_id: str, content: str = "hello") -> dict[str, Any]:
    return {"input": {"conversationId": conversation_id, "content": content}}


async def finished(server: LiveServer, message_id: str) -> None:
    async def done() -> bool:
        return bool((await stored_message(server, message_id))["status"] != "STREAMING")

    await eventually(done)


async def ledger(server: LiveServer) -> list[tuple[Any, ...]]:
    from sqlalchemy import text

    async with server.state.sessionmaker() as session:
        rows = await session.execute(text("SELECT * FROM usage_daily ORDER BY 1, 2, 3"))
    return [tuple(r) for r in rows]


def assert_feature_disabled(error: dict[str, Any], feature: str) -> None:
    assert error["extensions"]["code"] == "FORBIDDEN", error
    assert error["extensions"]["reason"] == "FEATURE_DISABLED"
    assert error["extensions"]["feature"] == feature


async def test_disabled_chat_is_forbidden_over_http_and_websockets(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        user = await server.register()
        conversation_id = await new_conversation(server, user.access_token)
        await set_flag_ok(server, admin, key="chat", scope="ROLE", role="USER", enabled=False)

        over_http = await server.execute(SEND, send_input(conversation_id), token=user.access_token)
        over_ws = await subscription_error(
            server, user.access_token, CHAT, send_input(conversation_id)
        )

        assert_feature_disabled(over_http.errors[0], "chat")
        assert_feature_disabled(over_ws, "chat")
        assert await count_rows(server, "messages") == 0
        assert await ledger(server) == []
        assert chat_stub.requests_to(CHAT_COMPLETIONS) == []
        # Admins keep chat: the flag is on the USER role only.
        admin_conversation = await new_conversation(server, admin.access_token)
        answer = await send(server, admin.access_token, admin_conversation, "still on?")
        await finished(server, answer["id"])


async def test_a_flag_change_reaches_an_open_socket_on_its_next_operation(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        user = await server.register()
        conversation_id = await new_conversation(server, user.access_token)

        async with asyncio.timeout(30), server.websocket(user.access_token) as session:
            first = [
                event
                async for event in session.subscribe(
                    GraphQLRequest(CHAT, variable_values=send_input(conversation_id, "one"))
                )
            ]
            await set_flag_ok(
                server, admin, key="chat", scope="USER", userId=user.id, enabled=False
            )
            with pytest.raises(TransportQueryError) as refused:
                async for _ in session.subscribe(
                    GraphQLRequest(CHAT, variable_values=send_input(conversation_id, "two"))
                ):
                    pass

        assert first[-1]["chat"]["__typename"] == "GenerationCompleted"
        errors = refused.value.errors or []
        assert len(errors) == 1
        assert_feature_disabled(errors[0], "chat")
        assert await count_rows(server, "messages") == 2


async def test_an_evaluation_flag_applies_to_its_conversations_only(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        user = await server.register()
        evaluation = await create_evaluation(server, user)
        linked = await new_conversation(server, user.access_token, evaluation_id=evaluation["id"])
        plain = await new_conversation(server, user.access_token)
        await set_flag_ok(server, admin, key="chat", scope="GLOBAL", enabled=False)
        await set_flag_ok(
            server,
            admin,
            key="chat",
            scope="EVALUATION",
            evaluationId=evaluation["id"],
            enabled=True,
            metadata={"model": "pilot-model"},
        )

        answer = await send(server, user.access_token, linked, "about the evaluation")
        await finished(server, answer["id"])
        elsewhere = await server.execute(SEND, send_input(plain), token=user.access_token)
        # A flag on the account itself is more specific than the evaluation's.
        await set_flag_ok(server, admin, key="chat", scope="USER", userId=user.id, enabled=False)
        overruled = await server.execute(SEND, send_input(linked), token=user.access_token)

        assert answer["model"] == "pilot-model"
        assert chat_stub.requests_to(CHAT_COMPLETIONS)[-1].body["model"] == "pilot-model"
        assert_feature_disabled(elsewhere.errors[0], "chat")
        assert_feature_disabled(overruled.errors[0], "chat")
        assert await count_rows(server, "messages") == 2


async def test_the_daily_limit_comes_from_the_flag(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        pilot = await server.register()
        await set_flag_ok(
            server,
            admin,
            key="chat",
            scope="USER",
            userId=pilot.id,
            enabled=True,
            metadata={"dailyLimit": 1},
        )
        conversation_id = await new_conversation(server, pilot.access_token)
        answer = await send(server, pilot.access_token, conversation_id, "first")
        await finished(server, answer["id"])
        before = await count_rows(server, "messages")

        second = await server.execute(
            SEND, send_input(conversation_id, "second"), token=pilot.access_token
        )

        assert second.code == "RATE_LIMITED"
        extensions = second.errors[0]["extensions"]
        assert extensions["reason"] == "DAILY_MESSAGE_LIMIT"
        assert extensions["limit"] == 1
        assert extensions["resetAt"] == next_utc_midnight()
        assert await count_rows(server, "messages") == before
        usage = (await server.execute(USAGE, token=pilot.access_token)).ok()["me"]["usage"]
        assert (usage["messagesToday"], usage["dailyMessageLimit"]) == (1, 1)


async def test_admins_are_limited_by_a_flag_on_their_role(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        await set_flag_ok(
            server,
            admin,
            key="chat",
            scope="ROLE",
            role="ADMIN",
            enabled=True,
            metadata={"dailyLimit": 0},
        )
        conversation_id = await new_conversation(server, admin.access_token)

        refused = await server.execute(SEND, send_input(conversation_id), token=admin.access_token)

        assert refused.code == "RATE_LIMITED"
        assert refused.errors[0]["extensions"]["limit"] == 0
        assert await count_rows(server, "messages") == 0


async def test_the_concurrency_cap_comes_from_the_flag(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = SLOW
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        user = await server.register()
        await set_flag_ok(
            server,
            admin,
            key="chat",
            scope="USER",
            userId=user.id,
            enabled=True,
            metadata={"maxConcurrent": 1},
        )
        conversation_id = await new_conversation(server, user.access_token)
        running = await send(server, user.access_token, conversation_id, "long one")

        second = await server.execute(
            SEND, send_input(conversation_id, "another"), token=user.access_token
        )

        assert second.code == "RATE_LIMITED"
        extensions = second.errors[0]["extensions"]
        assert (extensions["reason"], extensions["limit"], extensions["resetAt"]) == (
            "CONCURRENT_GENERATIONS",
            1,
            None,
        )
        assert await count_rows(server, "messages") == 2
        cancel = "mutation($id: ID!) { cancelGeneration(messageId: $id) { status } }"
        (await server.execute(cancel, {"id": running["id"]}, token=user.access_token)).ok()


async def test_model_and_answer_tokens_reach_the_provider(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        pilot = await server.register()
        other = await server.register()
        await set_flag_ok(
            server,
            admin,
            key="chat",
            scope="USER",
            userId=pilot.id,
            enabled=True,
            metadata={"model": "pilot-model", "maxAnswerTokens": 77},
        )
        for account in (pilot, other):
            conversation_id = await new_conversation(server, account.access_token)
            events = await chat_all(server, account.access_token, conversation_id, "hi")
            assert events[-1]["__typename"] == "GenerationCompleted"

        pilot_request, other_request = (r.body for r in chat_stub.requests_to(CHAT_COMPLETIONS))
        assert (pilot_request["model"], pilot_request["max_tokens"]) == ("pilot-model", 77)
        assert (other_request["model"], other_request["max_tokens"]) == ("stub-model", 1024)
        report = await usage_report(server, admin, "MODEL")
        assert {row["model"]: row["questions"] for row in report} == {
            "pilot-model": 1,
            "stub-model": 1,
        }
        assert all(row["completionTokens"] > 0 for row in report)


async def usage_report(server: LiveServer, admin: Account, group_by: str) -> list[dict[str, Any]]:
    today = datetime.now(UTC).date()
    result = await server.execute(
        USAGE_REPORT,
        {
            "from": (today - timedelta(days=1)).isoformat(),
            "to": today.isoformat(),
            "groupBy": group_by,
        },
        token=admin.access_token,
    )
    rows: list[dict[str, Any]] = result.ok()["usageReport"]
    return rows


async def test_the_usage_report_groups_the_ledger(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        admin = await new_admin(server)
        heavy, light = await server.register(), await server.register()
        for account, questions in ((heavy, 2), (light, 1)):
            conversation_id = await new_conversation(server, account.access_token)
            for n in range(questions):
                await chat_all(server, account.access_token, conversation_id, f"question {n}")
        yesterday = datetime.now(UTC).date() - timedelta(days=1)
        from sqlalchemy import text

        async with server.state.sessionmaker.begin() as session:
            await session.execute(
                text(
                    "INSERT INTO usage_daily (user_id, day, model, questions, answers, "
                    "prompt_tokens, completion_tokens) VALUES (CAST(:u AS uuid), :d, '', 5, 5, "
                    "10, 20)"
                ),
                {"u": light.id, "d": yesterday},
            )

        by_day = await usage_report(server, admin, "DAY")
        by_user = await usage_report(server, admin, "USER")
        by_model = await usage_report(server, admin, "MODEL")
        today_only = (
            await server.execute(
                USAGE_REPORT,
                {
                    "from": datetime.now(UTC).date().isoformat(),
                    "to": datetime.now(UTC).date().isoformat(),
                    "groupBy": "USER",
                    "limit": 1,
                },
                token=admin.access_token,
            )
        ).ok()["usageReport"]
        backwards = await server.execute(
            USAGE_REPORT,
            {"from": "2026-02-02", "to": "2026-02-01", "groupBy": "DAY"},
            token=admin.access_token,
        )

        assert [(r["day"], r["questions"]) for r in by_day] == [
            (yesterday.isoformat(), 5),
            (datetime.now(UTC).date().isoformat(), 3),
        ]
        assert all(r["userId"] is None and r["model"] is None for r in by_day)
        assert {r["userId"]: r["questions"] for r in by_user} == {heavy.id: 2, light.id: 6}
        assert {r["user"]["email"] for r in by_user} == {heavy.email, light.email}
        assert {r["model"]: r["answers"] for r in by_model} == {"stub-model": 3, None: 5}
        for row in by_day + by_user + by_model:
            assert row["totalTokens"] == row["promptTokens"] + row["completionTokens"]
        assert [r["userId"] for r in today_only] == [heavy.id]  # most tokens first
        assert backwards.code == "BAD_USER_INPUT"
        assert backwards.errors[0]["extensions"]["field"] == "to"


async def test_disabled_uploads_are_forbidden_and_store_nothing(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    await set_flag_ok(server, admin, key="uploads", scope="USER", userId=user.id, enabled=False)

    status, uploaded = await upload(server, user.access_token, "notes.txt", b"hello there")
    created = await create(server, user.access_token, "typed notes")

    assert status == 200
    assert_feature_disabled(uploaded.errors[0], "uploads")
    assert_feature_disabled(created.errors[0], "uploads")
    assert await count_rows(server, "documents") == 0
    _, allowed = await upload(server, admin.access_token, "notes.txt", b"hello there")
    allowed.ok()


async def test_uploads_follow_the_flag_size_and_types(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    await set_flag_ok(
        server,
        admin,
        key="uploads",
        scope="ROLE",
        role="USER",
        enabled=True,
        metadata={"maxBytes": 100, "types": ["text/markdown"]},
    )

    _, too_big = await upload(server, user.access_token, "notes.md", b"x" * 101)
    _, wrong_type = await upload(server, user.access_token, "notes.txt", b"plain text")
    wrong_typed = await create(server, user.access_token, "plain", mime_type="text/plain")
    too_long = await create(server, user.access_token, "y" * 101, mime_type="text/markdown")

    for result, field in (
        (too_big, "file"),
        (wrong_type, "file"),
        (wrong_typed, "mimeType"),
        (too_long, "content"),
    ):
        assert result.code == "BAD_USER_INPUT", result.errors
        assert result.errors[0]["extensions"]["field"] == field
    assert await count_rows(server, "documents") == 0
    _, fits = await upload(server, user.access_token, "notes.md", b"x" * 100)
    assert fits.ok()["uploadDocument"]["mimeType"] == "text/markdown"


async def test_disabled_search_is_forbidden(server: LiveServer) -> None:
    admin = await new_admin(server)
    user = await server.register()
    await set_flag_ok(server, admin, key="search", scope="GLOBAL", enabled=False)

    refused = await server.execute(SEARCH, {"q": "anything"}, token=user.access_token)
    await set_flag_ok(server, admin, key="search", scope="USER", userId=user.id, enabled=True)
    allowed = await server.execute(SEARCH, {"q": "anything"}, token=user.access_token)

    assert refused.data is None
    assert_feature_disabled(refused.errors[0], "search")
    assert allowed.ok()["search"] == []


async def test_without_flags_chat_behaves_as_configured(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(
        database_url,
        tmp_path,
        chat_stub,
        daily_message_limit=2,
        chat_max_concurrent_generations=5,
        chat_max_output_tokens=321,
    ) as server:
        user = await server.register()
        admin = await new_admin(server)
        conversation_id = await new_conversation(server, user.access_token)
        for content in ("one", "two"):
            answer = await send(server, user.access_token, conversation_id, content)
            await finished(server, answer["id"])
        third = await server.execute(SEND, send_input(conversation_id), token=user.access_token)
        admin_conversation = await new_conversation(server, admin.access_token)
        for content in ("one", "two", "three"):
            answer = await send(server, admin.access_token, admin_conversation, content)
            await finished(server, answer["id"])
        usage = (await server.execute(USAGE, token=user.access_token)).ok()["me"]["usage"]
        admin_usage = (await server.execute(USAGE, token=admin.access_token)).ok()["me"]["usage"]

    assert third.code == "RATE_LIMITED"
    assert third.errors[0]["extensions"]["limit"] == 2
    assert usage["dailyMessageLimit"] == 2
    assert admin_usage["dailyMessageLimit"] is None
    requests = [r.body for r in chat_stub.requests_to(CHAT_COMPLETIONS)]
    assert len(requests) == 5
    assert {(r["model"], r["max_tokens"]) for r in requests} == {("stub-model", 321)}
