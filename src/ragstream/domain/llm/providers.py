"""The configured chat and embedding providers.

Each implementation is imported only when it is the one configured: the OpenAI client library is
slow to import, and an offline server never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragstream.domain.llm.chat import ChatProvider
from ragstream.domain.llm.embeddings import Embedder, HashingEmbedder

if TYPE_CHECKING:
    from ragstream.settings import Settings
    from ragstream.workpool import WorkPool


def build_chat_provider(settings: Settings) -> ChatProvider:
    """The configured provider; builds clients but opens no connection."""
    if settings.chat_provider == "openai":
        from ragstream.domain.llm.openai_chat import OpenAIChatProvider

        return OpenAIChatProvider.from_settings(settings)
    from ragstream.domain.llm.extractive import ExtractiveChatProvider

    return ExtractiveChatProvider(word_delay=settings.extractive_word_delay_ms / 1000)


def build_embedder(settings: Settings, pool: WorkPool | None = None) -> Embedder:
    if settings.embedding_provider == "openai":
        from ragstream.domain.llm.openai_client import openai_client
        from ragstream.domain.llm.openai_embeddings import OpenAIEmbedder

        return OpenAIEmbedder(
            openai_client(settings),
            model=settings.embedding_model,
            dimensions=settings.embedding_dimensions,
            batch_size=settings.embedding_batch_size,
            request_dimensions=settings.embedding_request_dimensions,
        )
    return HashingEmbedder(
        settings.embedding_dimensions, pool=pool, time_limit=settings.ingestion_timeout_seconds
    )
