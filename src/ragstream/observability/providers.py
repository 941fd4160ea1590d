"""The chat provider and the embedder, observed: metrics (first token, total time, tokens,
failures by code) and trace spans, each only when it is on."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from ragstream.domain.llm.chat import ChatChunk, ChatProvider, ChatProviderError, ChatRequest
from ragstream.domain.llm.embeddings import Embedder
from ragstream.domain.text import estimate_tokens
from ragstream.observability.metrics import Metrics
from ragstream.observability.tracing import Tracing

INTERNAL_ERROR = "INTERNAL_ERROR"


@dataclass
class MeteredChatProvider:
    """Wraps a provider; the answer code sees the same chunks and the same exceptions."""

    inner: ChatProvider
    metrics: Metrics

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def buffers_unread(self) -> bool:
        return self.inner.buffers_unread

    def model_for(self, requested: str) -> str:
        return self.inner.model_for(requested)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        metrics = self.metrics
        started = time.perf_counter()
        first_token: float | None = None
        pieces: list[str] = []
        reported: int | None = None
        outcome = "stopped"  # cancelled, or closed by its reader before the end
        metrics.generation_started()
        try:
            async with contextlib.aclosing(self.inner.stream(request)) as chunks:
                async for chunk in chunks:
                    if chunk.text:
                        if first_token is None:
                            first_token = time.perf_counter() - started
                        pieces.append(chunk.text)
                    if chunk.usage is not None:
                        reported = chunk.usage.completion_tokens
                    yield chunk
            outcome = "ok"
        except ChatProviderError as exc:
            outcome = "failed"
            metrics.provider_failure(exc.code)
            raise
        except Exception:
            outcome = "failed"
            metrics.provider_failure(INTERNAL_ERROR)
            raise
        finally:
            tokens = reported if reported is not None else estimate_tokens("".join(pieces))
            metrics.generation_ended(
                outcome=outcome,
                tokens=tokens,
                first_token=first_token,
                total=time.perf_counter() - started,
            )

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class TracedChatProvider:
    """A span for each provider call, from the request to the last chunk or the failure."""

    inner: ChatProvider
    tracing: Tracing
    provider: str

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def buffers_unread(self) -> bool:
        return self.inner.buffers_unread

    def model_for(self, requested: str) -> str:
        return self.inner.model_for(requested)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[ChatChunk, None]:
        span = self.tracing.start(
            "llm.chat", **{"llm.provider": self.provider, "llm.model": request.model or self.model}
        )
        chunks = 0
        try:
            async with contextlib.aclosing(self.inner.stream(request)) as stream:
                async for chunk in stream:
                    chunks += 1
                    yield chunk
        except ChatProviderError as exc:
            span.set_attribute("error.type", exc.code)
            raise
        finally:
            span.set_attribute("llm.chunks", chunks)
            span.end()

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class TracedEmbedder:
    """A span for each embedding call (ingestion batches and search queries)."""

    inner: Embedder
    tracing: Tracing

    @property
    def dimensions(self) -> int:
        return self.inner.dimensions

    @property
    def name(self) -> str:
        return self.inner.name

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        with self.tracing.span(
            "embeddings", **{"embedding.model": self.name, "embedding.texts": len(texts)}
        ):
            return await self.inner.embed(texts)

    async def aclose(self) -> None:
        await self.inner.aclose()


def observed(provider: ChatProvider, metrics: Metrics, tracing: Tracing, name: str) -> ChatProvider:
    """The provider with what is on around it (itself when nothing is)."""
    if metrics.enabled:
        provider = MeteredChatProvider(provider, metrics)
    if tracing.enabled:
        provider = TracedChatProvider(provider, tracing, name)
    return provider


def observed_embedder(embedder: Embedder, tracing: Tracing) -> Embedder:
    return TracedEmbedder(embedder, tracing) if tracing.enabled else embedder
