"""The one OpenAI client builder: a provider set to `openai` without a key refuses to start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from ragstream import cli
from ragstream.domain.llm.chat import ChatRequest, PromptMessage
from ragstream.domain.llm.openai_chat import OpenAIChatProvider, _message_param
from ragstream.domain.llm.providers import build_embedder
from ragstream.settings import Settings
from tests.chat_stub import CHAT_COMPLETIONS, ChatStub
from tests.openai_stub import EMBEDDINGS


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment (no `.env`, no provider variables); returns the data dir."""
    for name in list(os.environ):
        if name.startswith(("RAGSTREAM_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("RAGSTREAM_DATA_DIR", str(data_dir))
    return data_dir


CHAT = "RAGSTREAM_CHAT_PROVIDER=openai"
EMBEDDING = "RAGSTREAM_EMBEDDING_PROVIDER=openai"


@pytest.mark.parametrize(
    ("chat", "embedding", "named"),
    [
        ("openai", "hashing", CHAT),
        ("extractive", "openai", EMBEDDING),
        ("openai", "openai", f"{CHAT} and {EMBEDDING}"),
    ],
)
def test_serve_refuses_an_openai_provider_without_a_key(
    environment: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    chat: str,
    embedding: str,
    named: str,
) -> None:
    # given an openai provider, and a base URL but no key
    monkeypatch.setenv("RAGSTREAM_CHAT_PROVIDER", chat)
    monkeypatch.setenv("RAGSTREAM_EMBEDDING_PROVIDER", embedding)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")

    # when serve starts
    code = cli.main(["serve", "--port", "0"])

    # then it stops as on any configuration error, says what to set, and started nothing
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"ragstream: OPENAI_API_KEY is required by {named};")
    assert not environment.exists()  # not even the development JWT secret was written


async def test_both_providers_send_the_configured_key(chat_stub: ChatStub, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path).model_copy(
        update={
            "chat_provider": "openai",
            "embedding_provider": "openai",
            "embedding_dimensions": 16,
            "openai_api_key": SecretStr("sk-configured"),
            "openai_base_url": chat_stub.base_url,
        }
    )
    chat = OpenAIChatProvider.from_settings(settings)
    embedder = build_embedder(settings)
    try:
        request = ChatRequest(messages=[PromptMessage("user", "Hi")], question="Hi")
        text = "".join([chunk.text async for chunk in chat.stream(request)])
        await embedder.embed(["Hi"])
    finally:
        await chat.aclose()
        await embedder.aclose()

    assert text == "Hello from the stub."
    for path in (CHAT_COMPLETIONS, EMBEDDINGS):
        [sent] = chat_stub.requests_to(path)
        assert sent.headers["authorization"] == "Bearer sk-configured"


async def test_a_chat_request_body_is_what_the_client_builds_from_its_typed_parameters(
    chat_stub: ChatStub, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path).model_copy(
        update={
            "chat_provider": "openai",
            "openai_api_key": SecretStr("sk-configured"),
            "openai_base_url": chat_stub.base_url,
            "chat_max_output_tokens": 300,
            "chat_temperature": 0.2,
        }
    )
    messages = [
        PromptMessage("system", "Answer from the sources.\n[1] « quoted » text"),
        PromptMessage("user", "Earlier question"),
        PromptMessage("assistant", "Earlier answer [1]"),
        PromptMessage("user", "What does it say?"),
    ]
    chat = OpenAIChatProvider.from_settings(settings)
    try:
        request = ChatRequest(messages=messages, question="What does it say?")
        [_ async for _ in chat.stream(request)]
        # The same request through the client's own typed path (its parameter transform).
        async with chat.client.chat.completions.with_streaming_response.create(
            model=settings.chat_model,
            messages=[_message_param(m) for m in messages],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=300,
            temperature=0.2,
        ) as response:
            await response.read()
    finally:
        await chat.aclose()

    sent, typed = chat_stub.requests_to(CHAT_COMPLETIONS)
    assert sent.body == typed.body
    assert list(sent.body["messages"]) == [{"role": m.role, "content": m.content} for m in messages]
