"""Provider failures: bounded retries before the first token, FAILED with a code after it,
and the provider's own error text never reaches a client."""

from __future__ import annotations

from pathlib import Path

from tests.chat_stub import CHAT_COMPLETIONS, ChatScript, ChatStub
from tests.chat_support import (
    CONVERSATION,
    chat_all,
    chat_server,
    joined,
    kinds,
    new_conversation,
    stored_message,
    stream_all,
)

TOKENS = ["alpha ", "beta ", "gamma ", "delta ", "epsilon"]
SECRET = "secret-provider-detail-42"


async def test_an_error_event_mid_stream_fails_the_answer_without_leaking_its_text(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, error_after=2, error_message=f"boom {SECRET}")
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert kinds(events)[-1] == "GenerationFailed"
        failed = events[-1]
        assert failed["code"] == "PROVIDER_ERROR"
        assert SECRET not in str(events)
        assert joined(events) == "alpha beta "
        answer_id = failed["messageId"]
        stored = await stored_message(server, answer_id)
        assert stored["status"] == "FAILED"
        assert stored["error_code"] == "PROVIDER_ERROR"
        assert stored["content"] == "alpha beta "
        # No retry once text was streamed: it would repeat or contradict it.
        assert len(chat_stub.requests_to(CHAT_COMPLETIONS)) == 1
        listed = await server.execute(
            CONVERSATION, {"id": conversation_id}, token=account.access_token
        )
        message = listed.ok()["conversation"]["messages"]["edges"][1]["node"]
        assert message["status"] == "FAILED"
        assert message["errorCode"] == "PROVIDER_ERROR"
        assert SECRET not in str(listed.data)
        replay = await stream_all(server, account.access_token, answer_id)
        assert kinds(replay)[-1] == "GenerationFailed"
        assert replay[-1]["code"] == "PROVIDER_ERROR"
        assert joined(replay) == "alpha beta "


async def test_errors_before_the_first_token_are_retried_a_bounded_number_of_times(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.fail(CHAT_COMPLETIONS, times=-1, status=503, message=f"down {SECRET}")
    async with chat_server(database_url, tmp_path, chat_stub, chat_max_retries=2) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert kinds(events) == [
            "GenerationStarted",
            "SourcesRetrieved",
            "GenerationFailed",
        ]
        assert events[-1]["code"] == "PROVIDER_UNAVAILABLE"
        assert SECRET not in str(events)
        # One attempt and two retries.
        assert len(chat_stub.requests_to(CHAT_COMPLETIONS)) == 3
        stored = await stored_message(server, events[-1]["messageId"])
        assert stored["status"] == "FAILED"
        assert stored["content"] == ""


async def test_a_retry_before_the_first_token_can_still_succeed(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.fail(CHAT_COMPLETIONS, times=1, status=429)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert kinds(events)[-1] == "GenerationCompleted"
        assert events[-1]["message"]["content"] == "Hello from the stub."
        assert len(chat_stub.requests_to(CHAT_COMPLETIONS)) == 2


async def test_a_refused_request_is_not_retried(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.fail(CHAT_COMPLETIONS, times=-1, status=400, message=f"bad {SECRET}")
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert events[-1]["code"] == "PROVIDER_ERROR"
        assert len(chat_stub.requests_to(CHAT_COMPLETIONS)) == 1


async def test_a_stalled_stream_fails_with_a_timeout_and_keeps_the_partial_text(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, stall_after=3)
    async with chat_server(
        database_url, tmp_path, chat_stub, chat_stall_timeout_seconds=0.3
    ) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert events[-1]["code"] == "PROVIDER_TIMEOUT"
        assert joined(events) == "alpha beta gamma "
        stored = await stored_message(server, events[-1]["messageId"])
        assert stored["status"] == "FAILED"
        assert stored["error_code"] == "PROVIDER_TIMEOUT"
        assert stored["content"] == "alpha beta gamma "
        # The stalled request was abandoned, not left hanging.
        assert chat_stub.streams[-1].abandoned


async def test_no_first_token_in_time_is_a_timeout_after_the_retries(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, stall_after=0)
    async with chat_server(
        database_url,
        tmp_path,
        chat_stub,
        chat_first_token_timeout_seconds=0.2,
        chat_max_retries=1,
    ) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert events[-1]["code"] == "PROVIDER_TIMEOUT"
        assert len(chat_stub.requests_to(CHAT_COMPLETIONS)) == 2


async def test_a_dropped_connection_mid_stream_fails_the_answer(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    chat_stub.script = ChatScript(tokens=TOKENS, drop_after=2)
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        conversation_id = await new_conversation(server, account.access_token)

        events = await chat_all(server, account.access_token, conversation_id, "Go")

        assert kinds(events)[-1] == "GenerationFailed"
        assert events[-1]["code"] == "PROVIDER_UNAVAILABLE"
        assert joined(events) == "alpha beta "
        stored = await stored_message(server, events[-1]["messageId"])
        assert stored["status"] == "FAILED"
        assert stored["content"] == "alpha beta "
