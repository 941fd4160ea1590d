"""The one place an OpenAI client is built, for the chat and the embedding providers alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragstream.settings import Settings, missing_openai_key

if TYPE_CHECKING:
    import httpx2
    import openai


def openai_client(
    settings: Settings,
    *,
    max_retries: int | None = None,
    timeout: float | openai.Timeout | None = None,
    transport: httpx2.AsyncBaseTransport | None = None,
) -> openai.AsyncOpenAI:
    """A client of the configured endpoint (``OPENAI_BASE_URL``, or OpenAI's own).

    ``max_retries`` and ``timeout`` default to ``RAGSTREAM_OPENAI_MAX_RETRIES`` and
    ``RAGSTREAM_OPENAI_TIMEOUT_SECONDS``. ``transport``: how its HTTP client reaches the
    endpoint (httpx's own by default). Building it opens no connection.
    """
    if settings.openai_api_key is None:
        raise missing_openai_key(settings)
    import openai  # here, not at the top: the start-up check must not pay for it

    http_client = None if transport is None else openai.DefaultAsyncHttpxClient(transport=transport)
    return openai.AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        max_retries=settings.openai_max_retries if max_retries is None else max_retries,
        timeout=settings.openai_timeout_seconds if timeout is None else timeout,
        http_client=http_client,
    )
