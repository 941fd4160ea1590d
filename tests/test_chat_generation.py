"""The manager's reads of answers that nothing runs: one process per database, so an answer
still STREAMING in the database but not running here had its end lost (e.g. the database
failed while storing it). Watching it does not wait for a text that will never come."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text

from tests.chat_stub import ChatStub
from tests.chat_support import (
    CANCEL,
    chat_all,
    chat_server,
    joined,
    kinds,
    new_conversation,
    stored_message,
    stream_all,
)
from tests.support import LiveServer


async def orphan(server: LiveServer, token: str) -> str:
    """An answer whose end was not stored: STREAMING with its text, and running nowhere."""
    conversation_id = await new_conversation(server, token)
    events = await chat_all(server, token, conversation_id, "Hi")
    answer_id: str = events[-1]["message"]["id"]
    async with server.state.sessionmaker.begin() as session:
        await session.execute(
            text("UPDATE messages SET status = 'STREAMING', completed_at = NULL WHERE id = :id"),
            {"id": answer_id},
        )
    return answer_id


async def test_watching_an_answer_that_nothing_runs_ends_at_once_as_interrupted(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        answer_id = await orphan(server, account.access_token)

        events = await stream_all(server, account.access_token, answer_id, 6)

        assert kinds(events) == ["SourcesRetrieved", "TokenDelta", "GenerationFailed"]
        assert joined(events, start=6) == "from the stub."
        assert events[-1]["code"] == "INTERRUPTED"
        assert (await stored_message(server, answer_id))["status"] == "STREAMING"


async def test_cancelling_an_answer_that_nothing_runs_stores_it_as_cancelled(
    database_url: str, tmp_path: Path, chat_stub: ChatStub
) -> None:
    async with chat_server(database_url, tmp_path, chat_stub) as server:
        account = await server.register()
        answer_id = await orphan(server, account.access_token)

        result = await server.execute(CANCEL, {"id": answer_id}, token=account.access_token)

        cancelled = result.ok()["cancelGeneration"]
        assert (cancelled["status"], cancelled["content"]) == ("CANCELLED", "Hello from the stub.")
        assert (await stored_message(server, answer_id))["status"] == "CANCELLED"
