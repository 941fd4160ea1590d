"""The one place an OpenAI client is built, for the chat and the embedding providers alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragstream.settings import ConfigurationError, Settings

if TYPE_CHECKING:
    import openai


def check_openai_key(settings: Settings) -> None:
    """Refuses a configuration where a provider is `openai` but no key is set.

    Without this the server would start and then fail every answer or every ingestion. Local
    OpenAI-compatible servers (Ollama, vLLM) accept any key, so they need one set too.
    """
    if settings.openai_api_key is None and _openai_providers(settings):
        raise _missing_key(settings)


def _openai_providers(settings: Settings) -> list[str]:
    providers = (
        ("RAGSTREAM_CHAT_PROVIDER", settings.chat_provider),
        ("RAGSTREAM_EMBEDDING_PROVIDER", settings.embedding_provider),
    )
    return [f"{name}=openai" for name, provider in providers if provider == "openai"]


def _missing_key(settings: Settings) -> ConfigurationError:
    needing = " and ".join(_openai_providers(settings)) or "an openai provider"
    return ConfigurationError(
        f"OPENAI_API_KEY is required by {needing}; set it (a local OpenAI-compatible server "
        "accepts any value, e.g. OPENAI_API_KEY=local) or choose the offline providers "
        "(extractive, hashing)"
    )


def openai_client(
    settings: Settings,
    *,
    max_retries: int | None = None,
    timeout: float | openai.Timeout | None = None,
) -> openai.AsyncOpenAI:
    """A client of the configured endpoint (``OPENAI_BASE_URL``, or OpenAI's own).

    ``max_retries`` and ``timeout`` default to ``RAGSTREAM_OPENAI_MAX_RETRIES`` and
    ``RAGSTREAM_OPENAI_TIMEOUT_SECONDS``. Building it opens no connection.
    """
    if settings.openai_api_key is None:
        raise _missing_key(settings)
    import openai  # here, not at the top: the start-up check above must not pay for it

    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=settings.openai_max_retries if max_retries is None else max_retries,
        timeout=settings.openai_timeout_seconds if timeout is None else timeout,
    )
